"""The package's layers, checked from its imports with ast: no circles, process state out of the math.

Layers, bottom to top: ``errors`` -> ``sampler/`` (pure tensor maths) -> the diffusion, model and
configuration modules -> ``jobs/`` -> ``cli``. An import may only point down.
"""

import ast
import functools
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "guided_diffusion")


def _modules():
    """Every module of the package as dotted name -> file path."""
    found = {}
    for folder, _, files in os.walk(PKG):
        for fname in files:
            if fname.endswith(".py"):
                path = os.path.join(folder, fname)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return found


MODULES = _modules()


@functools.lru_cache(maxsize=None)
def _imports(name):
    """The dotted names a module imports (absolute, relative ones resolved), any nesting level."""
    path = MODULES[name]
    is_pkg = path.endswith("__init__.py")
    package = name if is_pkg else name.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = {f"{mod}.{a.name}" for a in node.names}
            names.update(subs)
            if not subs <= set(MODULES):  # ``from pkg import module`` uses the module, not pkg's __init__
                names.add(mod)
    return frozenset(names)


def _package_edges(name):
    """Modules of this package that ``name`` imports."""
    return {m for m in MODULES if m != name and any(n == m for n in _imports(name))}


def test_the_walk_finds_the_subpackages():
    assert {"guided_diffusion.sampler.loop", "guided_diffusion.jobs.sample", "guided_diffusion.errors",
            "guided_diffusion.cli"} <= set(MODULES)
    assert "guided_diffusion.sampler.time_shift" in _package_edges("guided_diffusion.sampler.loop")


def test_no_import_circle():
    graph = {m: _package_edges(m) for m in MODULES}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_errors_is_the_bottom_and_cli_the_top():
    assert not {n for n in _imports("guided_diffusion.errors") if n.startswith("guided_diffusion")}
    importers = [m for m in MODULES if "guided_diffusion.cli" in _package_edges(m)]
    assert not importers, f"the CLI runner is the top layer; imported by {importers}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("guided_diffusion.sampler.")))
def test_sampler_imports_nothing_above_it(name):
    """The sampler knows nothing of files, flags, processes or the diffusion class that drives it."""
    above = {n for n in _imports(name) if n.startswith("guided_diffusion")
             and not n.startswith("guided_diffusion.sampler") and not n.startswith("guided_diffusion.errors")}
    assert not above, f"{name} imports {above}"
    assert not {n for n in _imports(name) if n.startswith(("mpi4py", "torch.distributed", "argparse"))}


@pytest.mark.parametrize("name", ["guided_diffusion.sampler.time_shift", "guided_diffusion.sampler.corrections",
                                  "guided_diffusion.sampler.solvers"])
def test_step_math_depends_on_torch_only(name):
    assert {n.split(".")[0] for n in _imports(name)} <= {"torch", "dataclasses", "typing", "math", "numbers"}


MATH = ["schedules", "gaussian_diffusion", "training_losses", "respace", "unet", "nn", "losses", "image_datasets",
        "script_util", "settings"]


@pytest.mark.parametrize("module", MATH)
def test_math_modules_do_not_touch_processes(module):
    bad = {n for n in _imports("guided_diffusion." + module)
           if n.startswith(("mpi4py", "torch.distributed", "guided_diffusion.dist_util", "guided_diffusion.jobs"))}
    assert not bad, f"{module} imports {bad}"


def test_only_dist_util_imports_mpi_and_torch_distributed():
    for name in MODULES:
        if name != "guided_diffusion.dist_util":
            assert not {n for n in _imports(name) if n.startswith(("mpi4py", "torch.distributed"))}, name


def test_no_sys_path_edits_anywhere():
    """The editable install makes every import work; nothing edits sys.path (tests included)."""
    for folder in ("guided_diffusion", "scripts", "tools", "evaluations", "datasets", "tests"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for fname in files:
                if fname.endswith(".py") and fname != "test_layering.py":
                    text = open(os.path.join(base, fname)).read()
                    assert "sys.path.insert" not in text and "sys.path.append" not in text, os.path.join(base, fname)
