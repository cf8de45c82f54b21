"""Factory and argparse helpers: upstream's keywords, defaults that do not crash, clear errors."""

import argparse

import pytest

from guided_diffusion.script_util import (
    add_dict_to_argparser,
    args_to_dict,
    create_classifier_and_diffusion,
    classifier_and_diffusion_defaults,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
    str2bool,
)
from reference_models import load_reference

README_FLAGS = (
    "--image_size 32 --timestep_respacing ddim5 --num_channels 128 --num_head_channels 32 --num_res_blocks 3 "
    "--attention_resolutions 16,8 --resblock_updown True --use_new_attention_order True --learn_sigma True "
    "--dropout 0.3 --diffusion_steps 1000 --noise_schedule cosine --use_scale_shift_norm True "
    "--do_time_shift True --cutoff 300 --window 80"
)


def _parser():
    p = argparse.ArgumentParser()
    add_dict_to_argparser(p, model_and_diffusion_defaults())
    return p


@pytest.mark.parametrize("name", ["unet_cifar_small.pt", "sampler_cosine.pt", "diffusion_hybrid.pt"])
def test_factory_accepts_upstream_kwargs(name):
    kwargs = load_reference(name)["kwargs"]
    assert set(kwargs) <= set(model_and_diffusion_defaults())
    create_model_and_diffusion(**kwargs)


def test_defaults_do_not_crash_and_typo_alias():
    defaults = model_and_diffusion_defaults()
    assert defaults["perturb_schedule_type"] == "linear"
    assert (defaults["window"], defaults["cutoff"], defaults["do_time_shift"]) == (2, 300, False)
    create_model_and_diffusion(**dict(defaults, num_channels=32, num_res_blocks=1))
    create_model_and_diffusion(**dict(defaults, num_channels=32, num_res_blocks=1, perturb_schedule_type="linaer"))


def test_unknown_keyword_is_named():
    with pytest.raises(TypeError, match="bogus_flag"):
        create_model_and_diffusion(bogus_flag=1)


def test_readme_flags_parse_into_the_seed_config():
    args = _parser().parse_args(README_FLAGS.split())
    kw = args_to_dict(args, model_and_diffusion_defaults().keys())
    assert kw["use_new_attention_order"] is True and kw["window"] == 80 and kw["ts_rule"] == "adm"
    _, diffusion = create_model_and_diffusion(**dict(kw, num_channels=32))
    assert diffusion.timestep_map == [0, 200, 400, 600, 800]
    assert diffusion.upstream_time_shift.window == 80 and diffusion.upstream_time_shift.cutoff == 300


@pytest.mark.parametrize("argv", [["--window", "-1"], ["--cutoff", "-5"], ["--use_fp16", "perhaps"],
                                  ["--ts_rule", "dpm"], ["--noise_schedule", "linaer"]])
def test_bad_flag_values_are_rejected(argv, capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(argv)


@pytest.mark.parametrize("text, value", [("yes", True), ("T", True), ("1", True), ("no", False), ("F", False),
                                         ("0", False)])
def test_str2bool(text, value):
    assert str2bool(text) is value
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


def test_every_flag_has_help():
    for action in _parser()._actions:
        if action.dest != "help":
            assert action.help and action.dest.replace("_", " ") not in (action.help.split(" (default")[0],)


def test_channel_mult_errors():
    with pytest.raises(ValueError, match="channel_mult"):
        create_model_and_diffusion(image_size=48, num_channels=32)
    with pytest.raises(ValueError, match="channel_mult"):
        create_model_and_diffusion(image_size=32, num_channels=32, channel_mult="1,x")


def test_classifier_and_superres_factories():
    kw = dict(classifier_and_diffusion_defaults(), image_size=32, classifier_width=32, classifier_depth=1,
              classifier_attention_resolutions="16")
    clf, diffusion = create_classifier_and_diffusion(**kw)
    assert clf.out[-1].c_proj.weight.shape[0] == 1000 and diffusion.num_timesteps == 1000
    kw = dict(sr_model_and_diffusion_defaults(), large_size=64, small_size=32, num_channels=32, num_res_blocks=1)
    model, _ = sr_create_model_and_diffusion(**kw)
    assert model.input_blocks[0][0].weight.shape[1] == 6
