"""MPI and process state stay out of the math: import rules checked with ast."""

import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "guided_diffusion")
MATH_MODULES = ["schedules", "gaussian_diffusion", "training_losses", "respace", "time_shift", "sampling", "unet",
                "nn", "losses", "generate", "image_datasets", "script_util", "corrections", "solvers", "settings",
                "conditioning"]
FORBIDDEN = {"mpi4py", "torch.distributed", "guided_diffusion.dist_util", "dist_util", "argparse_never"}


def _imports(path):
    tree = ast.parse(open(path).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" if mod else a.name for a in node.names)
    return names


@pytest.mark.parametrize("module", MATH_MODULES)
def test_math_modules_do_not_touch_processes(module):
    names = _imports(os.path.join(PKG, module + ".py"))
    bad = {n for n in names if any(n == f or n.startswith(f + ".") or n.endswith("." + f) for f in FORBIDDEN)}
    assert not bad, f"{module} imports {bad}"


def test_only_dist_util_imports_mpi_and_torch_distributed():
    for fname in os.listdir(PKG):
        if fname.endswith(".py") and fname != "dist_util.py":
            names = _imports(os.path.join(PKG, fname))
            assert not {n for n in names if n.startswith("mpi4py") or n.startswith("torch.distributed")}, fname


def test_time_shift_depends_on_torch_only():
    names = _imports(os.path.join(PKG, "time_shift.py"))
    assert {n.split(".")[0] for n in names} <= {"torch", "dataclasses", "typing"}


@pytest.mark.parametrize("module", ["corrections", "solvers"])
def test_step_math_depends_on_torch_only(module):
    names = _imports(os.path.join(PKG, module + ".py"))
    assert {n.split(".")[0] for n in names} <= {"torch", "dataclasses", "typing", "math", "numbers"}, names


def test_loop_does_not_import_the_diffusion_or_the_command_layer():
    """sampling.py (the loop) is below gaussian_diffusion.py and knows nothing of files, flags or processes."""
    names = _imports(os.path.join(PKG, "sampling.py"))
    for layer in ("gaussian_diffusion", "respace", "script_util", "settings", "sample_run", "sample_parts", "io_util"):
        assert not any(n.split(".")[-1] == layer or n.endswith("." + layer) or n == layer for n in names), layer


def test_scripts_import_no_private_helpers_and_no_sys_path_hacks():
    root = os.path.dirname(PKG)
    for folder in ("guided_diffusion", "scripts", "evaluations", "datasets"):
        for fname in os.listdir(os.path.join(root, folder)):
            if fname.endswith(".py"):
                text = open(os.path.join(root, folder, fname)).read()
                assert "sys.path.insert" not in text, f"{folder}/{fname}"
