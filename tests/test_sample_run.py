"""guided_diffusion.jobs.sample (and scripts/image_sample.py): same npz bytes for any process count /
batch size, resume, refusals, NaN stop.

A tiny class-conditional model (8 px, 32 channels, 4 DDIM steps) is written by the tests. Runs
that must be separate processes (mpiexec, a hard exit, the script itself) use subprocess and are
marked ``integration``; the rest call :func:`run_sampling` in this process to keep the file fast.
"""

import io
import os
import shutil

import numpy as np
import pytest
import torch

from guided_diffusion.jobs import parts as sample_parts
from guided_diffusion.sampler.generate import LABEL_STREAM, SampleNoise
from guided_diffusion.io_util import write_npz_streaming
from guided_diffusion.cli import run_cli
from guided_diffusion.jobs.sample import parse_sampling_flags, run_sampling
from helpers import EXIT_AFTER_PARTS, ROOT, argv_of, run_proc, save_random_model

SCRIPT = os.path.join(ROOT, "scripts", "image_sample.py")
SCRIPT_1GPU = os.path.join(ROOT, "scripts", "image_sample_1gpu.py")
NUM_SAMPLES = 10
NAN_INDEX = 3  # the NaN checkpoint breaks this sample only (through its class label)
MODEL = dict(
    image_size=8,
    num_channels=32,
    channel_mult="1",
    num_res_blocks=1,
    attention_resolutions="8",
    class_cond=True,
    diffusion_steps=100,
)
NPZ_NAME = "adm_cifar_ddim4step.npz"


def flags(model_path, out_dir, **extra):
    values = {**MODEL, "timestep_respacing": "ddim4", "use_ddim": True, "num_samples": NUM_SAMPLES,
              "progress": False, "model_path": model_path, "out_dir": out_dir, **extra}
    return argv_of(values)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scale_out")
    good = str(folder / "tiny.pt")
    sd = save_random_model(good, **MODEL).state_dict()
    label = int(SampleNoise(0).integers(torch.tensor([NAN_INDEX]), LABEL_STREAM, 1000)[0])
    others = SampleNoise(0).integers(torch.arange(NUM_SAMPLES), LABEL_STREAM, 1000).tolist()
    assert others.count(label) == 1
    sd = {k: v.clone() for k, v in sd.items()}
    sd["label_emb.weight"][label] = float("nan")
    bad = str(folder / "nan.pt")
    torch.save(sd, bad)
    return {"good": good, "nan": bad, "dir": folder}


def run_here(argv):
    """The sampling command in this process (single process); returns the npz path."""
    job, _ = parse_sampling_flags(argv)
    return run_sampling(job, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def reference(ckpts):
    """npz bytes of one plain in-process run (batch 4)."""
    out = ckpts["dir"] / "ref"
    path = run_here(flags(ckpts["good"], out, batch_size=4))
    assert not os.path.exists(path + ".parts")
    return open(path, "rb").read()


def test_npz_format_matches_np_savez(reference):
    z = np.load(io.BytesIO(reference))
    assert sorted(z.files) == ["arr_0", "arr_1"]
    assert z["arr_0"].shape == (NUM_SAMPLES, 8, 8, 3) and z["arr_0"].dtype == np.uint8
    assert z["arr_1"].dtype == np.int64
    buf = io.BytesIO()
    np.savez(buf, z["arr_0"], z["arr_1"])
    assert buf.getvalue() == reference


@pytest.mark.parametrize("batch_size", [2, 3])
def test_batch_size_does_not_change_bytes(ckpts, reference, tmp_path, batch_size):
    grid = tmp_path / "grid.png"
    path = run_here(flags(ckpts["good"], tmp_path, batch_size=batch_size, grid=grid, grid_size=4))
    assert open(path, "rb").read() == reference
    assert grid.exists()


@pytest.mark.integration
def test_1gpu_script_same_bytes(ckpts, reference, tmp_path):
    res = run_proc(SCRIPT_1GPU, flags(ckpts["good"], tmp_path, batch_size=10))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / NPZ_NAME).read_bytes() == reference


@pytest.mark.integration
def test_plain_script_same_bytes(ckpts, reference, tmp_path):
    res = run_proc(SCRIPT, flags(ckpts["good"], tmp_path, batch_size=4))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["wrote", str(tmp_path / NPZ_NAME), "wrote", str(tmp_path / NPZ_NAME[:-4]) + ".json"]
    assert (tmp_path / NPZ_NAME).read_bytes() == reference


@pytest.mark.mpi
@pytest.mark.integration
def test_mpiexec_two_ranks_same_bytes(ckpts, reference, tmp_path):
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec not installed")
    # batch 4: 3 batches, so rank 0 has two and rank 1 one (unequal counts must not hang).
    res = run_proc(SCRIPT, flags(ckpts["good"], tmp_path, batch_size=4), launcher=("mpiexec", "-n", "2"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / NPZ_NAME).read_bytes() == reference


@pytest.mark.integration
def test_kill_and_resume_same_bytes(ckpts, reference, tmp_path):
    argv = flags(ckpts["good"], tmp_path, batch_size=3)
    res = run_proc(EXIT_AFTER_PARTS, ["2", SCRIPT, *argv])
    assert res.returncode != 0
    parts_dir = str(tmp_path / NPZ_NAME) + ".parts"
    assert [p[:2] for p in sample_parts.list_parts(parts_dir)] == [(0, 3), (3, 6)]
    assert not (tmp_path / NPZ_NAME).exists()
    # A stray temporary from the killed process is cleaned; another batch size may resume.
    open(os.path.join(parts_dir, ".tmp-stale.npz"), "wb").close()
    path = run_here(flags(ckpts["good"], tmp_path, batch_size=4))
    assert open(path, "rb").read() == reference
    assert not os.path.exists(parts_dir)


def test_keep_parts_then_more_samples(ckpts, reference, tmp_path):
    run_here(flags(ckpts["good"], tmp_path, batch_size=4, num_samples=6, keep_parts=True))
    z = np.load(tmp_path / NPZ_NAME)
    ref = np.load(io.BytesIO(reference))
    assert np.array_equal(z["arr_0"], ref["arr_0"][:6])
    path = run_here(flags(ckpts["good"], tmp_path, batch_size=4))
    assert open(path, "rb").read() == reference


def test_mismatched_parts_refused(ckpts, tmp_path, capsys):
    argv = flags(ckpts["good"], tmp_path, batch_size=4, keep_parts=True)
    run_here(argv)
    with pytest.raises(SystemExit) as exc:
        run_cli(run_here, flags(ckpts["good"], tmp_path, batch_size=4, seed=1, eta=0.5))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "seed" in err and "eta" in err and "--overwrite True" in err
    before = (tmp_path / NPZ_NAME).read_bytes()
    run_here(flags(ckpts["good"], tmp_path, batch_size=4, seed=1, overwrite=True))
    assert (tmp_path / NPZ_NAME).read_bytes() != before


@pytest.mark.integration
def test_nan_sample_stops_single_process(ckpts, tmp_path):
    res = run_proc(SCRIPT, flags(ckpts["nan"], tmp_path, batch_size=2))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"sample {NAN_INDEX} " in lines[0] and "DDIM" in lines[0], res.stderr
    assert not (tmp_path / NPZ_NAME).exists()
    done = [p[:2] for p in sample_parts.list_parts(str(tmp_path / NPZ_NAME) + ".parts")]
    assert done == [(0, 2)]  # the failing batch [2, 4) wrote nothing


@pytest.mark.mpi
@pytest.mark.integration
def test_nan_sample_stops_every_rank(ckpts, tmp_path):
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec not installed")
    # batch 2: [2, 4) is rank 1's first batch, so rank 1 fails and rank 0 must stop too.
    res = run_proc(SCRIPT, flags(ckpts["nan"], tmp_path, batch_size=2), launcher=("mpiexec", "-n", "2"))
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and f"sample {NAN_INDEX} " in lines[0], res.stderr
    assert not (tmp_path / NPZ_NAME).exists()


def test_plan_and_streaming_writer():
    done = sample_parts.done_intervals([(0, 4, ""), (3, 6, ""), (8, 9, ""), (12, 20, "")], 10)
    assert done == [(0, 6), (8, 9)]
    assert sample_parts.plan_batches(done, 10, 3) == [(6, 8), (9, 10)]
    assert sample_parts.plan_batches([], 7, 3) == [(0, 3), (3, 6), (6, 7)]
    a = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    buf, ref = io.BytesIO(), io.BytesIO()
    write_npz_streaming(buf, [("arr_0", np.uint8, a.shape, [a[:2], a[2:]])])
    np.savez(ref, a)
    assert buf.getvalue() == ref.getvalue()


def test_run_metadata_json(ckpts, tmp_path):
    import json

    path = run_here(flags(ckpts["good"], tmp_path, batch_size=5))
    meta = json.loads(open(path[:-4] + ".json").read())
    assert meta["npz"] == NPZ_NAME and meta["steps"] == 4 and meta["nfe"] == 4 and meta["timesteps"] == [75, 50, 25, 0]
    assert meta["settings"]["seed"] == 0 and len(meta["checkpoint_sha256"]) == 64 and "DDIM" in meta["sampler"]


def test_grid_start_warning():
    """quadN / pndmN end at 0.8 T: with the cosine schedule that start keeps alpha_bar ~0.09 of signal,
    which the loops ignore (they start from pure noise), so the run warns; ddimN and linear do not."""
    from guided_diffusion.jobs.sample import grid_start_warning
    from guided_diffusion.script_util import create_gaussian_diffusion

    def warning(schedule, respacing):
        return grid_start_warning(create_gaussian_diffusion(steps=1000, noise_schedule=schedule,
                                                            timestep_respacing=respacing))

    line = warning("cosine", "quad10")
    assert "t = 800" in line and "alpha_bar = 0.093" in line and "--timestep_respacing 10" in line
    assert "t = 801" in warning("cosine", "pndm10")
    assert warning("cosine", "ddim10") == warning("cosine", "10") == warning("linear", "quad10") == ""
