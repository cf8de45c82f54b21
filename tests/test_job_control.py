"""Reliability of long jobs: the output lock, preemption by SIGTERM/SIGINT,
part checksums and failed assembly.

A tiny class-conditional model (8 px, 32 channels, no attention, 3 DDIM steps). Runs that must be
real processes (two runs on one output, a signalled run, mpiexec, the training script) use
subprocess and are marked ``integration`` (``mpi`` for mpiexec); the rest run in this process.
"""

import errno
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from guided_diffusion.jobs import control as job_control

from guided_diffusion.jobs import parts as sample_parts
from guided_diffusion.cli import run_cli
from guided_diffusion.errors import Preempted
from guided_diffusion.jobs.control import OutputLock, OutputLockedError, lock_path_for
from guided_diffusion.jobs.sample import parse_sampling_flags, run_sampling
from helpers import ROOT, argv_of, save_random_model

SCRIPT = os.path.join(ROOT, "scripts", "image_sample.py")
TRAIN_SCRIPT = os.path.join(ROOT, "scripts", "image_train.py")
PAUSE = os.path.join(ROOT, "tests", "tools", "pause_before_part.py")
NUM_SAMPLES = 10
MODEL = dict(image_size=8, num_channels=32, channel_mult="1", num_res_blocks=1, attention_resolutions="",
             class_cond=True, diffusion_steps=50)
NPZ_NAME = "adm_cifar_ddim3step.npz"


def flags(model_path, out_dir, **extra):
    values = {**MODEL, "timestep_respacing": "ddim3", "use_ddim": True, "num_samples": NUM_SAMPLES,
              "batch_size": 3, "progress": False, "model_path": model_path, "out_dir": out_dir, **extra}
    return argv_of(values)


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": ""}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("jobs") / "tiny.pt"
    save_random_model(path, **MODEL)
    return str(path)


def run_here(argv, **kw):
    job, _ = parse_sampling_flags(argv)
    return run_sampling(job, device=torch.device("cpu"), **kw)


@pytest.fixture(scope="module")
def reference(ckpt, tmp_path_factory):
    """npz bytes of one uninterrupted in-process run."""
    path = run_here(flags(ckpt, tmp_path_factory.mktemp("ref")))
    return open(path, "rb").read()


def parts_of(out_dir):
    return [p[:2] for p in sample_parts.list_parts(os.path.join(str(out_dir), NPZ_NAME) + ".parts")]


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(path, **fields):
    with open(path, "w") as f:
        json.dump(fields, f)


# ------------------------------------------------------------------------------- the lock
def test_lock_refuses_live_holder_and_takes_over_stale_ones(tmp_path):
    out = str(tmp_path / "x.npz")
    lock_file = lock_path_for(out)
    a = OutputLock(out)
    assert a.acquire() == []
    info = json.load(open(lock_file))
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid() and info["started"]
    with pytest.raises(OutputLockedError) as exc:  # a live holder (this very process)
        OutputLock(out).acquire()
    line = str(exc.value)
    assert "\n" not in line and f"pid {os.getpid()} on host {socket.gethostname()}, started" in line
    a.release()
    assert not os.path.exists(lock_file)

    cases = [  # (lock content, mtime age in s, expected words of the takeover warning)
        (dict(host=socket.gethostname(), pid=dead_pid(), started="then"), 0, "is gone"),
        (dict(host=socket.gethostname(), pid=os.getpid(), proc_start=job_control.proc_start_ticks(os.getpid()) - 1,
              started="then"), 0, "pid reused"),
        (dict(host="some-other-node", pid=1, started="then"), 10 * job_control.stale_after_s(), "no heartbeat"),
        (None, 1000, "unreadable"),
    ]
    for content, age, words in cases:
        if content is None:
            open(lock_file, "w").write("{trunc")
        else:
            write_lock(lock_file, **content)
        os.utime(lock_file, (time.time() - age, time.time() - age))
        lock = OutputLock(out)
        warnings = lock.acquire()
        assert len(warnings) == 1 and words in warnings[0], (content, warnings)
        assert json.load(open(lock_file))["token"] == lock.token
        lock.release()
    # Another host's lock with a recent heartbeat, or a fresh unreadable one, is respected.
    for fresh in (lambda: write_lock(lock_file, host="some-other-node", pid=1, started="then"),
                  lambda: open(lock_file, "w").write("")):
        fresh()
        with pytest.raises(OutputLockedError):
            OutputLock(out).acquire()
    os.remove(lock_file)


def test_lock_heartbeat_and_release_only_own_lock(tmp_path):
    out = str(tmp_path / "x.npz")
    lock = OutputLock(out, heartbeat_s=0.05)
    lock.acquire()
    old = time.time() - 1000
    os.utime(lock.path, (old, old))
    deadline = time.time() + 10
    while os.stat(lock.path).st_mtime < old + 500 and time.time() < deadline:
        time.sleep(0.05)
    assert os.stat(lock.path).st_mtime > old + 500  # refreshed by the heartbeat thread
    write_lock(lock.path, host="some-other-node", pid=1, started="now")  # taken from us meanwhile
    lock.release()
    assert json.load(open(lock.path))["host"] == "some-other-node"


def test_stale_lock_of_killed_run_is_taken_over(ckpt, reference, tmp_path, capsys):
    os.makedirs(tmp_path, exist_ok=True)
    lock_file = lock_path_for(str(tmp_path / NPZ_NAME))
    pid = dead_pid()
    write_lock(lock_file, host=socket.gethostname(), pid=pid, started="2020-01-01T00:00:00")
    path = run_here(flags(ckpt, tmp_path))
    err = capsys.readouterr().err
    assert f"warning: took over the stale lock of pid {pid} on host {socket.gethostname()}" in err
    assert open(path, "rb").read() == reference
    assert not os.path.exists(lock_file)


# ------------------------------------------------------------------------------- preemption
def _wait_for(path, proc, timeout=90):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before pausing: {proc.communicate()[1][-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the paused process")
        time.sleep(0.05)
    return int(open(path).read())


@pytest.mark.integration
def test_second_run_refused_then_sigterm_and_resume(ckpt, reference, tmp_path):
    """Run A pauses with its first batch in flight; run B on the same output refuses (one line naming
    A); SIGTERM to A: it writes that batch, stops (143) with the resume command; the command resumes
    to the same bytes as an uninterrupted run."""
    out, pause = tmp_path / "out", tmp_path / "pause"
    pause.mkdir()
    argv = flags(ckpt, out)
    cmd = [sys.executable, PAUSE, "1", SCRIPT, *argv]
    a = subprocess.Popen(cmd, cwd=ROOT, env={**env(), "PAUSE_DIR": str(pause)}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(pause / "ready.0", a) == a.pid
        b = subprocess.run([sys.executable, SCRIPT, *argv], cwd=ROOT, env=env(), capture_output=True, text=True,
                           timeout=120)
        assert b.returncode == 2
        lines = b.stderr.strip().splitlines()
        assert len(lines) == 1, b.stderr
        assert f"being written by another run: pid {a.pid} on host {socket.gethostname()}, started" in lines[0]
        a.send_signal(signal.SIGTERM)
        (pause / "go").touch()
        _, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert a.returncode == 143, err
    assert parts_of(out) == [(0, 3)]  # the batch in flight was finished and kept
    assert not (out / NPZ_NAME).exists() and not os.path.exists(lock_path_for(str(out / NPZ_NAME)))
    lines = err.strip().splitlines()
    assert lines[0].startswith("received SIGTERM") and len(lines) == 2, err
    prefix = "run the same command to resume: "
    assert "stopped by SIGTERM at a batch boundary: 3 of 10 samples are kept" in lines[1] and prefix in lines[1]
    resume = lines[1].split(prefix, 1)[1]
    assert resume == shlex.join(cmd)
    res = subprocess.run(shlex.split(resume), cwd=ROOT, env={**env(), "PAUSE_DIR": str(pause)},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (out / NPZ_NAME).read_bytes() == reference


@pytest.mark.mpi
@pytest.mark.integration
def test_sigterm_on_one_rank_stops_both_ranks(ckpt, reference, tmp_path):
    """mpiexec -n 2: SIGTERM to rank 1 only, while its first batch is in flight; both ranks stop after
    that round (parts of round 0 from both ranks), rank 0 prints the line; the rerun gives the same bytes."""
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec not installed")
    out, pause = tmp_path / "out", tmp_path / "pause"
    pause.mkdir()
    argv = flags(ckpt, out)
    a = subprocess.Popen(["mpiexec", "-n", "2", sys.executable, PAUSE, "1", SCRIPT, *argv], cwd=ROOT,
                         env={**env(), "PAUSE_DIR": str(pause), "PAUSE_RANK": "1"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid = _wait_for(pause / "ready.1", a)
        os.kill(pid, signal.SIGTERM)
        (pause / "go").touch()
        _, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert a.returncode != 0
    assert parts_of(out) == [(0, 3), (3, 6)]  # round 0 of both ranks; rank 0 did not start [6, 9)
    stopped = [ln for ln in err.splitlines() if "stopped by SIGTERM" in ln]
    assert len(stopped) == 1 and "6 of 10 samples are kept" in stopped[0] and "mpiexec -n 2 " in stopped[0], err
    assert not os.path.exists(lock_path_for(str(out / NPZ_NAME)))
    path = run_here(argv)
    assert open(path, "rb").read() == reference


def test_sigint_in_process_stops_at_the_batch_boundary(ckpt, reference, tmp_path, capfd):
    """SIGINT (Ctrl-C) while a batch is in flight: Preempted with exit code 130 after that batch."""
    written = []

    def interrupt(path):
        written.append(path)
        if len(written) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Preempted) as exc:
        run_here(flags(ckpt, tmp_path), on_part_written=interrupt)
    assert exc.value.exit_code == 130 and len(written) == 1
    assert "stopped by SIGINT" in capfd.readouterr().err
    assert parts_of(tmp_path) == [(0, 3)]
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert not os.path.exists(lock_path_for(str(tmp_path / NPZ_NAME)))
    assert open(run_here(flags(ckpt, tmp_path)), "rb").read() == reference


def test_signal_during_the_last_batch_finishes_the_run(ckpt, reference, tmp_path):
    """A SIGINT that arrives while the last batch is made does not leave a finished run to resume:
    every sample exists, so the npz is written (same bytes) and the run returns normally."""
    import math

    written = []

    def interrupt(path):
        written.append(path)
        if len(written) == math.ceil(NUM_SAMPLES / 3):  # batch_size 3: the last part
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    path = run_here(flags(ckpt, tmp_path), on_part_written=interrupt)
    assert open(path, "rb").read() == reference
    assert signal.getsignal(signal.SIGINT) is before
    assert not os.path.exists(lock_path_for(str(tmp_path / NPZ_NAME)))


# ------------------------------------------------------------------------------- integrity
def _flip_byte(path, offset):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x40
    open(path, "wb").write(bytes(data))


def _images_offset(path):
    """Offset of a byte a few bytes into the pixels of a part file (its stored zip member)."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        at = zf.getinfo("images.npy").header_offset
    raw = open(path, "rb").read()
    name_len, extra_len = (int.from_bytes(raw[at + i : at + i + 2], "little") for i in (26, 28))
    member = at + 30 + name_len + extra_len  # the .npy file: magic, header ending in a newline, data
    return raw.index(b"\n", member) + 1 + 5


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "garbage", "old_format"])
def test_damaged_part_is_made_again(ckpt, reference, tmp_path, capsys, damage):
    argv = flags(ckpt, tmp_path, keep_parts=True)
    run_here(argv)
    part = os.path.join(str(tmp_path / NPZ_NAME) + ".parts", sample_parts.part_name(3, 6))
    if damage == "bitflip":
        _flip_byte(part, _images_offset(part))
    elif damage == "truncate":
        os.truncate(part, os.path.getsize(part) // 2)
    elif damage == "garbage":
        open(part, "wb").write(b"not an npz")
    else:  # written by the previous format: no checksums
        with np.load(part) as z:
            images, labels = z["images"], z["labels"]
        with open(part, "wb") as f:
            np.savez(f, images=images, labels=labels)
    (tmp_path / NPZ_NAME).unlink()
    capsys.readouterr()
    run_here(argv)
    err = capsys.readouterr().err.strip().splitlines()
    if damage == "old_format":
        assert err == []  # accepted (readable, right shape and dtype)
    else:
        assert len(err) == 1 and err[0].startswith(f"warning: {part}: ") and "made again" in err[0], err
        with np.load(part) as z:
            assert "sha256_images" in z.files  # regenerated in the current format
    assert (tmp_path / NPZ_NAME).read_bytes() == reference


def test_checksum_catches_a_consistent_looking_file(tmp_path):
    """A part whose zip is intact but whose pixels differ from its stored checksum is bad."""
    images = np.zeros((2, 8, 8, 3), np.uint8)
    path = sample_parts.write_part(str(tmp_path), 0, images, np.array([1, 2]))
    with np.load(path) as z:
        members = {k: z[k] for k in z.files}
    members["images"] = members["images"].copy()
    members["images"][1, 2, 3, 0] = 7
    np.savez(path, **members)
    with pytest.raises(sample_parts.BadPartError, match="checksum"):
        sample_parts.read_part_array(path, "images", (2, 8, 8, 3), np.uint8)
    # Assembly never copies it: it fails with the reason, and leaves no temporary and no output.
    out = str(tmp_path / "out.npz")
    with pytest.raises(sample_parts.BadPartError, match="nothing was assembled"):
        sample_parts.assemble(str(tmp_path), out, num_samples=2, image_shape=(8, 8, 3), with_labels=True)
    assert not os.path.exists(out) and sorted(os.listdir(tmp_path)) == [sample_parts.part_name(0, 2)]


def test_full_disk_during_assembly_keeps_parts(ckpt, reference, tmp_path, capsys, monkeypatch):
    def full_disk(fileobj, members):
        fileobj.write(b"x" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    argv = flags(ckpt, tmp_path)
    monkeypatch.setattr(sample_parts, "write_npz_streaming", full_disk)
    with pytest.raises(SystemExit) as exc:
        run_cli(run_here, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "are kept" in err[0], err
    parts_dir = str(tmp_path / NPZ_NAME) + ".parts"
    assert parts_of(tmp_path) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert not [n for n in os.listdir(parts_dir) if n.startswith(".tmp-")]
    assert not (tmp_path / NPZ_NAME).exists() and not os.path.exists(lock_path_for(str(tmp_path / NPZ_NAME)))
    monkeypatch.undo()
    assert open(run_here(argv), "rb").read() == reference


# ------------------------------------------------------------------------------- training
@pytest.mark.integration
def test_train_sigterm_saves_a_resumable_checkpoint(tmp_path):
    from test_train_util import TINY, _load_train_script

    npz = str(tmp_path / "data.npz")
    np.savez(npz, np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8))
    train_flags = [x for k, v in {**TINY, "data_dir": npz, "batch_size": 4, "max_steps": 100000,
                                  "log_interval": 1, "save_interval": 0}.items() for x in (f"--{k}", str(v))]
    out = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, TRAIN_SCRIPT, *train_flags, "--out_dir", out], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the first logged step
            if line.startswith("| step"):
                break
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    models = sorted(n for n in os.listdir(out) if n.startswith("model"))
    assert len(models) == 1, models
    step = int(models[0][len("model"):-len(".pt")])
    assert step >= 1
    for name in (f"opt{step:06d}.pt", f"ema_0.9999_{step:06d}.pt"):
        assert os.path.exists(os.path.join(out, name))
    model_path = os.path.join(out, models[0])
    line = [ln for ln in err.splitlines() if "stopped by SIGTERM" in ln]
    assert len(line) == 1 and f"at step {step}: saved {model_path}" in line[0]
    assert line[0].endswith(f"--resume_checkpoint {model_path}")
    loop = _load_train_script().main(train_flags + ["--out_dir", out, "--resume_checkpoint", model_path,
                                                    "--max_steps", str(step + 1)])
    assert loop.step == step + 1 and loop.stopped_by is None
    assert os.path.exists(os.path.join(out, f"model{step + 1:06d}.pt"))
