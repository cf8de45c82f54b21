"""Every setting is declared once in guided_diffusion/settings.py, and every command's flags come from there."""

import argparse
import ast
import collections
import dataclasses
import glob
import os
import runpy
import sys

import pytest

from guided_diffusion import settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS_SOURCE = os.path.join(ROOT, "guided_diffusion", "settings.py")
# Commands whose own flags (bench cells, search space, evaluator options) are not settings declarations yet.
OWN_FLAG_COMMANDS = {"fid_table.py", "tune_sampler.py"}


def declarations():
    """[(group, name)] of every ``name: type = setting(...)`` in settings.py, in source order."""
    tree = ast.parse(open(SETTINGS_SOURCE).read())
    out = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if (isinstance(item, ast.AnnAssign) and isinstance(item.value, ast.Call)
                        and getattr(item.value.func, "id", None) == "setting"):
                    out.append((node.name, item.target.id))
    return out


def groups():
    return [obj for obj in vars(settings).values()
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == settings.__name__]


def test_every_name_is_declared_exactly_once():
    counts = collections.Counter(name for _, name in declarations())
    assert len(counts) > 90
    assert {name: n for name, n in counts.items() if n != 1} == {}


def test_every_field_of_every_group_is_a_declaration():
    declared = {name for _, name in declarations()}
    for cls in groups():
        for f in dataclasses.fields(cls):
            assert f.name in declared, f"{cls.__name__}.{f.name} is not made with setting()"
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_group_defaults_change_the_default_only():
    train, clf = settings.TrainConfig(), settings.ClassifierTrainConfig()
    assert (train.out_dir, clf.out_dir, clf.batch_size, clf.lr, train.lr) == (
        "train_out", "classifier_out", 4, 3e-4, 1e-4)
    assert settings.RunConfig().batch_size == 16 and settings.NllConfig().num_samples == 1000
    meta = {cls.__name__: {f.name: f.metadata for f in dataclasses.fields(cls)}
            for cls in (settings.TrainConfig, settings.ClassifierTrainConfig, settings.OutputConfig)}
    assert meta["TrainConfig"]["out_dir"] == meta["ClassifierTrainConfig"]["out_dir"] == meta["OutputConfig"]["out_dir"]
    with pytest.raises(TypeError, match="no inherited setting"):
        settings.group(no_such_setting=1)(type("G", (), {}))


def test_the_two_trainers_share_their_common_fields():
    common = set(settings.field_names(settings.TrainConfig)) & set(settings.field_names(settings.ClassifierTrainConfig))
    shared = set(settings.field_names(settings.TrainingConfig))
    assert common == shared and len(shared) >= 12


class _Captured(BaseException):
    def __init__(self, parser):
        self.parser = parser


def parser_of(path, monkeypatch):
    """The ArgumentParser a command builds: run it as __main__ and stop at its parse_args."""

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    monkeypatch.setattr(sys, "argv", [path])
    with pytest.raises(_Captured) as info:
        runpy.run_path(path, run_name="__main__")
    return info.value.parser


def flags(parser):
    """{name: action} of a parser's --name options (without --help)."""
    return {a.option_strings[0][2:]: a for a in parser._actions
            if a.option_strings and a.option_strings[0].startswith("--") and a.dest != "help"}


def check_from_declaration(name, action):
    f = settings.declared(*groups())[name]
    assert action.type is settings._parser_type(f, action.default), name
    assert (tuple(action.choices) if action.choices else None) == (
        tuple(f.metadata["choices"]) if f.metadata["choices"] else None), name
    assert action.help.startswith(f.metadata["help"]), name


SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "scripts", "*.py")))
TOOLS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "tools", "*.py")))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_of_a_user_command_is_a_declaration(script, monkeypatch):
    if script in OWN_FLAG_COMMANDS:
        pytest.skip(f"{script} still declares its own bench/search flags besides the sampling settings")
    names = {name for _, name in declarations()}
    parser = parser_of(os.path.join(ROOT, "scripts", script), monkeypatch)
    options = flags(parser)
    assert options and sorted(set(options) - names) == []
    for name, action in options.items():
        check_from_declaration(name, action)


@pytest.mark.parametrize("tool", TOOLS)
def test_a_tool_flag_named_like_a_setting_is_that_setting(tool, monkeypatch):
    names = {name for _, name in declarations()}
    options = flags(parser_of(os.path.join(ROOT, "tools", tool), monkeypatch))
    for name, action in options.items():
        assert action.help, f"{tool} --{name} has no help"
        if name in names:
            check_from_declaration(name, action)
