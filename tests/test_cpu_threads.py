"""The CPU thread default (dist_util.default_cpu_threads / set_cpu_threads) and its overrides."""

import os
import subprocess
import sys

import pytest

from guided_diffusion.dist_util import default_cpu_threads


@pytest.mark.parametrize("cores, local, load, expected", [
    (2, 1, 0.1, 2),    # quiet 2-core machine
    (2, 1, 2.7, 1),    # 2-core machine with other jobs: one thread, not two spinning on one core
    (2, 2, 0.0, 1),    # mpiexec -n 2 on 2 cores
    (64, 1, 0.0, 16),  # quiet 64-core workstation: capped
    (64, 8, 0.0, 8),   # 8 local ranks share 64 cores
    (64, 1, 60.0, 4),  # a busy workstation keeps what is free
    (1, 4, 9.0, 1),    # never below one
])
def test_default_cpu_threads(cores, local, load, expected):
    assert default_cpu_threads(cores, local, load) == expected


def _threads_in_script(env_changes):
    code = ("from guided_diffusion.cli import run_cli\n"
            "import torch\n"
            "run_cli(lambda argv: print(torch.get_num_threads()))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GD_NUM_THREADS")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_project_variable_overrides_the_default():
    res = _threads_in_script({"GD_NUM_THREADS": "3"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "3"


def test_omp_num_threads_is_left_alone():
    res = _threads_in_script({"OMP_NUM_THREADS": "2", "GD_NUM_THREADS": "5"})
    assert res.stdout.strip() == "2", res.stderr


def test_bad_override_is_one_line_exit_2():
    res = _threads_in_script({"GD_NUM_THREADS": "many"})
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "GD_NUM_THREADS" in res.stderr
