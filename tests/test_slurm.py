"""srun launches: SLURM's environment read by dist_util (rank, task count, local rank, first node as the
rendezvous host), half-set environments refused in one line, and the same bytes as one process and
mpiexec, simulated on the CPU with gloo by starting two processes with the SLURM variables set."""

import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from guided_diffusion.dist_util import first_host, launcher_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "scripts", "image_sample.py")
TRAIN = os.path.join(ROOT, "scripts", "image_train.py")


@pytest.mark.parametrize("nodes,first", [("gpu07", "gpu07"), ("gpu[07-09,12],cpu1", "gpu07"), ("a1,b[2-3]", "a1"),
                                         ("node[001-004]", "node001"), ("x[3,5]", "x3")])
def test_first_host_of_a_compact_node_list(nodes, first):
    assert first_host(nodes) == first


def slurm_env(rank, ntasks=2, port=None, **extra):
    env = {"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(ntasks), "SLURM_LOCALID": str(rank),
           "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": "4242", "SLURM_TASKS_PER_NODE": f"{ntasks}"}
    if port is not None:
        env["MASTER_PORT"] = str(port)
    env.update(extra)
    return env


def test_slurm_environment_is_read():
    assert launcher_env(slurm_env(1)) == ("slurm", 1, 2, 1, 2, {"MASTER_ADDR": "localhost",
                                                                  "MASTER_PORT": str(15000 + 4242 % 20000)})
    env = slurm_env(0, ntasks=8, SLURM_STEP_NUM_TASKS="4", SLURM_STEP_NODELIST="n[3-4]", SLURM_TASKS_PER_NODE="2(x2)")
    assert launcher_env(env)[:5] == ("slurm", 0, 4, 0, 2) and launcher_env(env)[5]["MASTER_ADDR"] == "n3"
    assert launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})[0] is None  # one task: one process
    assert launcher_env({**slurm_env(0), "RANK": "0", "WORLD_SIZE": "1"})[0] == "torchrun"  # torchrun wins
    assert launcher_env({**slurm_env(0), "PMI_RANK": "0"})[0] == "mpi"  # mpiexec inside an allocation


@pytest.mark.parametrize("env,missing", [({"SLURM_PROCID": "0"}, "SLURM_NTASKS"),
                                         ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "SLURM_LOCALID"),
                                         ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"},
                                          "SLURM_JOB_NODELIST"),
                                         ({"RANK": "0"}, "WORLD_SIZE"), ({"WORLD_SIZE": "2"}, "RANK"),
                                         ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR")])
def test_half_set_environment_names_the_missing_variable(env, missing):
    with pytest.raises(ValueError, match=missing):
        launcher_env(env)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_", "OMPI_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": ""}


def run_srun(script, args, ntasks=2):
    """What ``srun -n NTASKS python SCRIPT ARGS`` starts on one node: NTASKS processes with SLURM's variables."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, script, *args], env={**_base_env(), **slurm_env(r, ntasks, port)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(ntasks)]
    outs = [p.communicate(timeout=300) for p in procs]
    return [p.returncode for p in procs], outs


SAMPLE_FLAGS = ["--timestep_respacing", "ddim4", "--use_ddim", "True", "--eta", "1", "--do_time_shift", "True",
                "--window", "40", "--num_samples", "5", "--progress", "False"]


def _npz_bytes(out_dir):
    (name,) = [f for f in os.listdir(out_dir) if f.endswith(".npz")]
    with open(os.path.join(out_dir, name), "rb") as f:
        return f.read()


def test_srun_two_tasks_write_the_bytes_of_one_process(tmp_path):
    codes, outs = run_srun(SAMPLE, [*SAMPLE_FLAGS, "--batch_size", "2", "--out_dir", str(tmp_path / "srun")])
    assert codes == [0, 0], outs
    one = subprocess.run([sys.executable, SAMPLE, *SAMPLE_FLAGS, "--batch_size", "3", "--out_dir",
                          str(tmp_path / "one")], env=_base_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    assert _npz_bytes(tmp_path / "srun") == _npz_bytes(tmp_path / "one")
    tr = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                         str(_free_port()), SAMPLE, *SAMPLE_FLAGS, "--batch_size", "1", "--out_dir",
                         str(tmp_path / "torchrun")], env=_base_env(), capture_output=True, text=True, timeout=300)
    assert tr.returncode == 0, tr.stderr[-2000:]
    assert _npz_bytes(tmp_path / "torchrun") == _npz_bytes(tmp_path / "one")


def test_half_set_slurm_environment_is_one_line_exit_2(tmp_path):
    env = {**_base_env(), "SLURM_PROCID": "0"}
    res = subprocess.run([sys.executable, SAMPLE, *SAMPLE_FLAGS, "--out_dir", str(tmp_path / "o")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "SLURM_NTASKS" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.mpi
def test_image_train_under_srun_equals_mpiexec(tmp_path):
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec not installed")
    data = tmp_path / "tiny.npz"
    np.savez(data, np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8))
    flags = ["--data_dir", str(data), "--image_size", "8", "--image_channels", "1", "--num_channels", "32",
             "--channel_mult", "1,2", "--num_res_blocks", "1", "--attention_resolutions", "4", "--diffusion_steps",
             "4", "--noise_schedule", "cosine", "--batch_size", "2", "--max_steps", "2", "--save_interval", "0"]
    codes, outs = run_srun(TRAIN, [*flags, "--out_dir", str(tmp_path / "srun")])
    assert codes == [0, 0], outs
    env = {**_base_env(), "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    res = subprocess.run(["mpiexec", "-n", "2", sys.executable, TRAIN, *flags, "--out_dir", str(tmp_path / "mpi")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for name in ("model000002.pt", "ema_0.9999_000002.pt"):
        a = torch.load(tmp_path / "srun" / name, weights_only=True)
        b = torch.load(tmp_path / "mpi" / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
