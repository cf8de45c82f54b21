"""Training: exact resume, microbatches, fp16, the loss-aware sampler, flags, and an mpiexec smoke test."""

import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from guided_diffusion import logger
from guided_diffusion.checkpoint import load_checkpoint_into
from guided_diffusion.image_datasets import ImageDataset, StepBatcher
from guided_diffusion.resample import (
    LossSecondMomentResampler, UniformSampler, create_named_schedule_sampler,
)
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.train_util import (
    TrainLoop, derive_seed, ema_rate_at, parse_ema_rates, parse_resume_step_from_filename, save_atomic,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SCRIPT = os.path.join(REPO, "scripts", "image_train.py")

# A tiny grey model covering dropout, DDPM-IP, learned sigmas (hybrid loss) and attention.
TINY = dict(
    image_size=8, image_channels=1, num_channels=32, channel_mult="1,2", num_res_blocks=1,
    attention_resolutions="4", learn_sigma=True, dropout=0.1, input_pertub=0.1,
    diffusion_steps=2, noise_schedule="cosine",
)


def _flags(d):
    return [x for k, v in d.items() for x in (f"--{k}", str(v))]


def _load_train_script():
    spec = importlib.util.spec_from_file_location("image_train", TRAIN_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def train_script():
    return _load_train_script()


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(path, rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8))
    return str(path)


@pytest.fixture(autouse=True)
def _reset_logger():
    yield
    logger.close()


def _flatten(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{prefix}/{i}")
    else:
        yield prefix, obj


def _assert_bit_equal(path_a, path_b):
    a = dict(_flatten(torch.load(path_a, weights_only=True)))
    b = dict(_flatten(torch.load(path_b, weights_only=True)))
    assert a.keys() == b.keys(), path_a
    for k in a:
        if torch.is_tensor(a[k]):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"{os.path.basename(path_a)}{k}"
        else:
            assert a[k] == b[k], f"{os.path.basename(path_a)}{k}"


# ------------------------------------------------------------------------------- exact resume
def test_exact_resume_bit_for_bit(tmp_path, npz, train_script):
    """4 steps straight == 2 steps + resume from model000002.pt + 2 steps (model, EMA, opt)."""
    if torch.cuda.is_available():
        pytest.skip("bit-exact resume is a CPU guarantee (CUDA kernels are not deterministic)")
    flags = _flags(TINY) + _flags(dict(
        data_dir=npz, batch_size=8, microbatch=3, schedule_sampler="loss-second-moment",
        ema_rate="0.9,0.99", lr_anneal_steps=10, max_steps=4, save_interval=2, log_interval=2, seed=3,
    ))
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train_script.main(flags + ["--out_dir", straight])
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(straight, "*.pt")))
    assert names == [
        "ema_0.99_000002.pt", "ema_0.99_000004.pt", "ema_0.9_000002.pt", "ema_0.9_000004.pt",
        "model000002.pt", "model000004.pt", "opt000002.pt", "opt000004.pt",
    ]
    # The loss-aware sampler warms up between the resume point and the end, so its state matters.
    counts_k = torch.load(os.path.join(straight, "opt000002.pt"))["schedule_sampler"]["loss_counts"]
    counts_n = torch.load(os.path.join(straight, "opt000004.pt"))["schedule_sampler"]["loss_counts"]
    assert (counts_k < 10).any() and (counts_n == 10).all()

    loop = train_script.main(
        flags + ["--out_dir", resumed, "--resume_checkpoint", os.path.join(straight, "model000002.pt")]
    )
    assert loop.step == 4
    for name in ("model000004.pt", "ema_0.9_000004.pt", "ema_0.99_000004.pt", "opt000004.pt"):
        _assert_bit_equal(os.path.join(straight, name), os.path.join(resumed, name))
    # The run is not trivially constant: the checkpoints changed between steps 2 and 4.
    a = torch.load(os.path.join(straight, "model000002.pt"))
    b = torch.load(os.path.join(straight, "model000004.pt"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert os.path.getsize(os.path.join(straight, "progress.csv")) > 0
    assert not glob.glob(os.path.join(straight, "*.tmp*"))


def test_checkpoints_load_strictly_in_the_sampler(tmp_path, npz, train_script):
    """The EMA file is a plain UNet state_dict that the sampling CLI loads strictly (fp16 run)."""
    out = str(tmp_path / "fp16")
    flags = _flags({**TINY, "dropout": 0.0}) + _flags(dict(
        data_dir=npz, batch_size=4, max_steps=2, save_interval=0, log_interval=1, use_fp16=True,
    ))
    loop = train_script.main(flags + ["--out_dir", out])
    assert loop.mp_trainer.use_fp16
    assert loop.model.input_blocks[0][0].weight.dtype == torch.float16
    assert np.isfinite(loop.mp_trainer.last_grad_norm) or loop.mp_trainer.lg_loss_scale < 20
    ema = os.path.join(out, "ema_0.9999_000002.pt")
    state = torch.load(ema, weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values())

    from guided_diffusion.jobs.sample import build_model_and_diffusion, parse_sampling_flags

    job, _ = parse_sampling_flags(_flags({**TINY, "dropout": 0.0}) + ["--model_path", ema])
    model, _ = build_model_and_diffusion(job, torch.device("cpu"))
    assert torch.equal(model.state_dict()["out.2.weight"], state["out.2.weight"])


# ------------------------------------------------------------------------------- microbatches
def _tiny_loop(npz, microbatch, **kw):
    torch.manual_seed(0)
    model, diffusion = create_model_and_diffusion(
        **{**model_and_diffusion_defaults(), **TINY, "dropout": 0.0, "use_fp16": kw.get("use_fp16", False)}
    )
    data = StepBatcher(ImageDataset(npz, 8, image_channels=1), 8, seed=1)
    return TrainLoop(
        model=model, diffusion=diffusion, data=data, batch_size=8, microbatch=microbatch, lr=1e-4,
        ema_rate="0.9999", log_interval=10, save_interval=0, out_dir=None, seed=5, **kw,
    )


@pytest.mark.parametrize("sampler", ["uniform", "loss-second-moment"])
def test_microbatch_gives_the_full_batch_gradient(npz, sampler):
    grads = []
    for micro in (-1, 3):
        loop = _tiny_loop(npz, micro)
        loop.schedule_sampler = create_named_schedule_sampler(sampler, loop.diffusion)
        # Move the zero-initialised output layer so every parameter gets a gradient.
        with torch.no_grad():
            loop.model.out[2].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
        x, cond = loop.data.batch(0)
        loop.forward_backward(x, cond)
        grads.append([p.grad.clone() for p in loop.model.parameters()])
        if sampler == "loss-second-moment":
            assert loop.schedule_sampler._loss_counts.sum() == 8
    scale = max(g.abs().max().item() for g in grads[0])
    for g_full, g_micro in zip(*grads):
        torch.testing.assert_close(g_micro, g_full, rtol=1e-4, atol=1e-6 * scale)


# ------------------------------------------------------------------------------- fp16
def test_mixed_precision_trainer_step_and_overflow(npz):
    x = torch.ones(1, 4, 4, dtype=torch.float16)
    try:
        torch.nn.functional.conv2d(x[None], torch.ones(1, 1, 1, 1, dtype=torch.float16))
    except RuntimeError as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"float16 convolutions do not run on this CPU build: {exc}")
    loop = _tiny_loop(npz, -1, use_fp16=True)
    mp = loop.mp_trainer
    assert mp.master_params[0].dtype == torch.float32
    x, cond = loop.data.batch(0)
    loop.run_step(x, cond)
    assert np.isfinite(mp.last_grad_norm) and mp.lg_loss_scale == pytest.approx(20.001)
    # The fp16 model weights follow the master weights.
    for p, m in zip(mp.model_params, mp.master_params):
        torch.testing.assert_close(p.float(), m.to(p.dtype).float())
    # An overflowing gradient skips the step and halves the loss scale.
    before = [m.clone() for m in mp.master_params]
    mp.zero_grad()
    for p in mp.model_params:
        p.grad = torch.zeros_like(p)
    mp.model_params[0].grad[0] = float("inf")
    assert mp.optimize(loop.opt) is False
    assert mp.lg_loss_scale == pytest.approx(19.001)
    assert all(torch.equal(a, b) for a, b in zip(before, mp.master_params))


# ------------------------------------------------------------------------------- samplers
class _FakeDiffusion:
    num_timesteps = 4


def test_loss_second_moment_sampler():
    s = LossSecondMomentResampler(_FakeDiffusion(), history_per_term=2, uniform_prob=0.0)
    assert np.allclose(s.weights(), 1.0)  # uniform until every t has a full history
    s.update_with_all_losses([0, 0, 1, 1, 2, 2], [1.0, 1.0, 2.0, 2.0, 3.0, 3.0])
    assert np.allclose(s.weights(), 1.0)
    # Two "ranks" gathered in rank order; t=3 gets 4 losses, only the last 2 are kept.
    parts = [([3, 3], [9.0, 9.0]), ([3, 3], [4.0, 4.0])]
    s.update_with_local_losses(torch.tensor([3, 3]), torch.tensor([9.0, 9.0]), gather_fn=lambda mine: parts)
    w = s.weights()
    assert np.allclose(w, np.array([1.0, 2.0, 3.0, 4.0]) / 10.0)
    gen = torch.Generator().manual_seed(0)
    t, iw = s.sample(20000, torch.device("cpu"), generator=gen)
    assert np.allclose(np.bincount(t.numpy(), minlength=4) / 20000, w, atol=0.015)
    assert torch.allclose(iw, torch.tensor(1.0 / (4 * w))[t].float())
    t2, _ = s.sample(20000, torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, t2)
    # State round trip.
    s2 = LossSecondMomentResampler(_FakeDiffusion(), history_per_term=2, uniform_prob=0.0)
    s2.load_state_dict(s.state_dict())
    assert np.array_equal(s2.weights(), w)
    with pytest.raises(ValueError, match="history"):
        LossSecondMomentResampler(_FakeDiffusion(), history_per_term=3).load_state_dict(s.state_dict())
    u = UniformSampler(_FakeDiffusion())
    t, iw = u.sample(8, torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 4 and torch.equal(iw, torch.ones(8))
    with pytest.raises(NotImplementedError):
        create_named_schedule_sampler("nope", _FakeDiffusion())


# ------------------------------------------------------------------------------- helpers, flags
def test_helpers(tmp_path):
    assert parse_resume_step_from_filename("/a/b/model012345.pt") == 12345
    assert parse_resume_step_from_filename("/a/b/ema_0.9999_000010.pt") == 0
    assert parse_ema_rates("0.999,0.9999") == [0.999, 0.9999]
    with pytest.raises(ValueError):
        parse_ema_rates("1.5")
    assert ema_rate_at(0.9999, 0, True) == pytest.approx(0.1)
    assert ema_rate_at(0.9999, 10**6, True) == 0.9999 and ema_rate_at(0.9999, 0, False) == 0.9999
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2) != derive_seed(1, "a", 3)
    path = str(tmp_path / "x.pt")
    save_atomic({"w": torch.ones(2)}, path)
    assert torch.equal(torch.load(path)["w"], torch.ones(2)) and os.listdir(tmp_path) == ["x.pt"]


def test_every_flag_has_help(train_script):
    parser = train_script.create_argparser()
    dests = {a.dest: a for a in parser._actions if not isinstance(a, argparse._HelpAction)}
    for name in ("lr", "weight_decay", "lr_anneal_steps", "batch_size", "microbatch", "ema_rate",
                 "log_interval", "save_interval", "resume_checkpoint", "use_fp16", "fp16_scale_growth",
                 "schedule_sampler", "input_pertub", "perturb_schedule_type", "perturb_cutoff",
                 "image_channels", "out_dir", "seed", "random_flip", "max_steps", "ema_warmup", "data_dir"):
        assert name in dests, name
    assert all(a.help for a in dests.values())
    args = parser.parse_args([])
    assert args.lr == 1e-4 and args.microbatch == -1 and args.ema_rate == "0.9999" and args.ema_warmup is True
    with pytest.raises(SystemExit):  # not one of the declared choices
        parser.parse_args(["--data_dir", "x", "--schedule_sampler", "bad"])


# ------------------------------------------------------------------------------- mpiexec
@pytest.mark.mpi
def test_mpiexec_two_ranks_match_one_process(tmp_path, npz):
    """2 ranks x batch 4 == 1 process x batch 8 (same data, timesteps and noise; fp tolerance)."""
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec not found")
    # CPU + gloo even on a GPU machine (two ranks cannot share one GPU under nccl); OpenMPI needs
    # the root override where tests run as root (MPICH ignores it).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": "",
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    flags = _flags({**TINY, "dropout": 0.0}) + _flags(dict(
        data_dir=npz, schedule_sampler="loss-second-moment", max_steps=3, save_interval=0, log_interval=3,
    ))
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    cmd2 = [mpiexec, "-n", "2", sys.executable, TRAIN_SCRIPT, *flags, "--batch_size", "4", "--microbatch", "3",
            "--out_dir", two]
    res = subprocess.run(cmd2, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-2000:]
    assert "2 process(es)" in res.stdout
    res = subprocess.run([sys.executable, TRAIN_SCRIPT, *flags, "--batch_size", "8", "--out_dir", one],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("model000003.pt", "ema_0.9999_000003.pt", "opt000003.pt"):
        assert os.path.exists(os.path.join(two, name))
    # Same per-sample losses seen by the sampler (timesteps and noise agree across the split) ...
    s1 = torch.load(os.path.join(one, "opt000003.pt"))["schedule_sampler"]
    s2 = torch.load(os.path.join(two, "opt000003.pt"))["schedule_sampler"]
    assert torch.equal(s1["loss_counts"], s2["loss_counts"])
    torch.testing.assert_close(s1["loss_history"], s2["loss_history"], rtol=1e-4, atol=1e-6)
    # ... and the same function. (Parameters with a mathematically zero gradient, e.g. conv biases
    # before a one-channel-per-group GroupNorm, get +-lr Adam steps from rounding noise, so compare
    # outputs, not raw weights.)
    outs = []
    for d in (one, two):
        model, _ = create_model_and_diffusion(**{**model_and_diffusion_defaults(), **TINY, "dropout": 0.0})
        load_checkpoint_into(model, os.path.join(d, "model000003.pt")).eval()
        x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            outs.append(model(x, torch.tensor([0, 1, 1, 0])))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)


def test_first_step_is_logged_with_time_left_and_memory(tmp_path, npz, train_script, capsys):
    """A run shorter than --log_interval still says, after its first step, how long a step takes,
    how long the rest will take and the peak memory (with the --microbatch hint)."""
    flags = _flags({**TINY, "dropout": 0.0}) + _flags(dict(data_dir=npz, batch_size=4, max_steps=3,
                                                               save_interval=0, log_interval=10))
    train_script.main(flags + ["--out_dir", str(tmp_path / "run")])
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("step 1 took")]
    assert len(lines) == 1, lines
    assert re.search(r"^step 1 took [0-9.]+ s; 2 step\(s\) left, about [0-9.]+ min at this rate; peak memory "
                     r"[0-9,]+ MB \(--microbatch N < --batch_size lowers it\)$", lines[0]), lines[0]
    assert "step 1 took" in open(tmp_path / "run" / "log.txt").read()
