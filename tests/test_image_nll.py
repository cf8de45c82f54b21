"""Bits/dim (guided_diffusion.jobs.nll, scripts/image_nll.py): the bound against a direct computation of
its terms for a small T, per-sample noise, kill + resume, processes, bad inputs."""

import math
import os
import shutil

import numpy as np
import pytest
import torch

from guided_diffusion.sampler.generate import SampleNoise
from guided_diffusion.jobs.nll import bpd_terms, read_bpd, stratify_timesteps
from guided_diffusion.script_util import create_gaussian_diffusion, create_model_and_diffusion
from helpers import EXIT_AFTER_PARTS, ROOT, argv_of, run_proc

SCRIPT = os.path.join(ROOT, "scripts", "image_nll.py")
MODEL = dict(image_size=8, image_channels=1, num_channels=32, channel_mult="1", num_res_blocks=1,
             attention_resolutions="", diffusion_steps=10, noise_schedule="cosine", learn_sigma=True)
NUM = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def _approx_cdf(x):
    return 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def direct_bpd(x0, mu, s, delta, betas, seed, indices):
    """Prior + VB terms of the analytic model, written out in float64 numpy (Ho et al. eq. 5; improved
    DDPM's learned-range variance at v = 0; upstream's discretised decoder with its tanh CDF)."""
    T = len(betas)
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    post_log = np.log(np.append(post_var[1], post_var[1:]))
    x0 = x0.double().numpy()
    mu = mu.double().numpy()
    dims = x0[0].size
    terms = np.zeros((x0.shape[0], T))
    for t in range(T):
        noise = SampleNoise(seed).normal(indices, t + 1, tuple(x0.shape[1:])).double().numpy()
        xt = math.sqrt(ab[t]) * x0 + math.sqrt(1 - ab[t]) * noise
        eps = (1 + delta) * math.sqrt(1 - ab[t]) * (xt - math.sqrt(ab[t]) * mu) / (ab[t] * s**2 + 1 - ab[t])
        x0_hat = np.clip((xt - math.sqrt(1 - ab[t]) * eps) / math.sqrt(ab[t]), -1, 1)
        c1 = betas[t] * math.sqrt(ab_prev[t]) / (1 - ab[t])
        c2 = (1 - ab_prev[t]) * math.sqrt(1 - betas[t]) / (1 - ab[t])
        true_mean, model_mean = c1 * x0 + c2 * xt, c1 * x0_hat + c2 * xt
        model_log = 0.5 * math.log(betas[t]) + 0.5 * post_log[t]
        if t > 0:
            kl = 0.5 * (-1 + model_log - post_log[t] + math.exp(post_log[t] - model_log)
                        + (true_mean - model_mean) ** 2 * math.exp(-model_log))
            terms[:, t] = kl.reshape(len(x0), -1).sum(1) / dims / math.log(2)
        else:
            inv = math.exp(-0.5 * model_log)
            c = x0 - model_mean
            plus, minus = _approx_cdf(inv * (c + 1 / 255)), _approx_cdf(inv * (c - 1 / 255))
            logp = np.where(x0 < -0.999, np.log(np.maximum(plus, 1e-12)),
                            np.where(x0 > 0.999, np.log(np.maximum(1 - minus, 1e-12)),
                                     np.log(np.maximum(plus - minus, 1e-12))))
            terms[:, t] = -logp.reshape(len(x0), -1).sum(1) / dims / math.log(2)
    m, v = math.sqrt(ab[-1]) * x0, 1 - ab[-1]
    prior = (0.5 * (-1 - math.log(v) + v + m**2)).reshape(len(x0), -1).sum(1) / dims / math.log(2)
    return prior + terms.sum(1), prior, terms


def test_bound_equals_direct_computation(analytic_model):
    diffusion = create_gaussian_diffusion(steps=10, learn_sigma=True, noise_schedule="cosine")
    model = analytic_model(diffusion, shape=(1, 4, 4), delta=0.2)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (3, 1, 4, 4), generator=gen).float() / 127.5 - 1
    x0[0, 0, 0, 0], x0[0, 0, 0, 1] = -1.0, 1.0  # both edge bins of the decoder
    indices = torch.tensor([4, 0, 9])
    out = bpd_terms(model, diffusion, x0, indices, seed=3)
    total, prior, terms = direct_bpd(x0, model.mu, model.s, model.delta, diffusion.betas, 3, indices)
    assert out["vb"].shape == (3, 10)
    assert np.allclose(out["vb"].double().numpy()[:, ::-1], terms, rtol=1e-4, atol=2e-5)  # decreasing t
    assert np.allclose(out["prior_bpd"].double().numpy(), prior, rtol=1e-5, atol=1e-7)
    assert np.allclose(out["total_bpd"].double().numpy(), total, rtol=1e-5, atol=1e-4)
    # per-sample noise: image 0 of the batch gives the same terms alone
    alone = bpd_terms(model, diffusion, x0[:1], indices[:1], seed=3)
    assert torch.allclose(alone["total_bpd"], out["total_bpd"][:1], atol=1e-6)


@pytest.mark.parametrize("steps, strata", [(10, 1), (10, 3), (10, 9), (1000, 64), (1000, 999), (4000, 100)])
def test_strata_partition_the_timesteps(steps, strata):
    bounds = stratify_timesteps(steps, strata)
    assert len(bounds) == strata and bounds[0][0] == 1 and bounds[-1][1] == steps
    assert all(hi > lo for lo, hi in bounds) and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    widths = [hi - lo for lo, hi in bounds]
    assert widths[0] <= widths[-1] and max(widths) <= 2 * (steps - 1) / strata + 1  # narrow where t is small
    if strata == steps - 1:
        assert widths == [1] * strata


@pytest.mark.parametrize("strata", [0, 10, -1])
def test_strata_out_of_range(strata):
    if strata == 0:
        with pytest.raises(ValueError, match="--t_strata 0"):
            stratify_timesteps(10, 0)
    else:
        with pytest.raises(ValueError, match=f"--t_strata {strata}: use 0"):
            stratify_timesteps(10, strata)


def test_stratified_estimate_uses_the_exact_terms(analytic_model):
    """Each stratified column is the exact bound's term at its drawn t (same x_t); one stratum per
    timestep gives the exact total; averaging the estimate over every draw gives the exact total."""
    diffusion = create_gaussian_diffusion(steps=10, learn_sigma=True, noise_schedule="cosine")
    model = analytic_model(diffusion, shape=(1, 4, 4), delta=0.2)
    x0 = torch.randint(0, 256, (4, 1, 4, 4), generator=torch.Generator().manual_seed(1)).float() / 127.5 - 1
    indices = torch.tensor([3, 8, 0, 11])
    exact = bpd_terms(model, diffusion, x0, indices, seed=2)
    vb = exact["vb"].double().flip(1)  # column t (calc_bpd_loop's columns run in decreasing t)
    full = bpd_terms(model, diffusion, x0, indices, seed=2, t_strata=9)
    assert torch.allclose(full["total_bpd"], exact["total_bpd"].double(), atol=1e-5)
    est = bpd_terms(model, diffusion, x0, indices, seed=2, t_strata=3)
    assert est["t"].shape == (4, 4) and est["vb"].shape == (4, 4) and (est["t"][:, -1] == 0).all()
    assert torch.allclose(est["vb"].double(), vb.gather(1, est["t"]), atol=1e-6)
    assert len(set(map(tuple, est["t"].tolist()))) > 1  # images draw their own timesteps
    bounds = stratify_timesteps(10, 3)
    for j, (lo, hi) in enumerate(bounds):
        assert ((est["t"][:, 2 - j] >= lo) & (est["t"][:, 2 - j] < hi)).all()
    # expectation over the draws (uniform in each stratum) = the exact total
    mean_est = est["prior_bpd"].double() + vb[:, 0] + sum(vb[:, lo:hi].mean(1) * (hi - lo) for lo, hi in bounds)
    assert torch.allclose(mean_est, exact["total_bpd"].double(), atol=1e-5)
    widths = torch.tensor([hi - lo for lo, hi in bounds][::-1] + [1], dtype=torch.float64)
    direct = est["prior_bpd"].double() + (est["vb"].double() * widths).sum(1)
    assert widths.tolist() == [5, 3, 1, 1] and torch.allclose(est["total_bpd"], direct, atol=1e-9)


# ------------------------------------------------------------------ the script
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nll")
    rng = np.random.RandomState(1)
    data = str(folder / "data.npz")
    np.savez(data, (rng.rand(7, 8, 8) * 255).astype(np.uint8))
    torch.manual_seed(0)
    model, _ = create_model_and_diffusion(**MODEL)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    torch.save(model.state_dict(), folder / "dm.pt")
    return {"dir": folder, "data": data, "model": str(folder / "dm.pt")}


def flags(files, out_dir, **extra):
    values = {**MODEL, "model_path": files["model"], "data_dir": files["data"], "num_samples": NUM,
              "batch_size": 2, "seed": 5, "out_dir": out_dir, **extra}
    return argv_of(values)


def run_here(files, out_dir, **extra):
    import runpy

    return runpy.run_path(SCRIPT)["main"](flags(files, out_dir, **extra))


@pytest.fixture(scope="module")
def reference(files):
    out = str(files["dir"] / "ref")
    summary = run_here(files, out, batch_size=3)
    return summary, open(os.path.join(out, "bpd.npz"), "rb").read()


def test_script_outputs(files, reference):
    summary, _ = reference
    out = str(files["dir"] / "ref")
    again, arrays = read_bpd(out)
    assert again["bpd"] == summary["bpd"] and summary["num_images"] == NUM and summary["steps"] == 10
    assert np.isclose(arrays["total_bpd"].mean(), summary["bpd"])
    vb = np.load(os.path.join(out, "vb_terms.npz"))["arr_0"]
    assert vb.shape == (10,) and np.isclose(vb.sum() + summary["prior_bpd"], summary["bpd"])
    for name in ("mse_terms.npz", "xstart_mse_terms.npz"):
        assert np.load(os.path.join(out, name))["arr_0"].shape == (10,)
    assert not os.path.exists(os.path.join(out, "bpd.npz.parts"))
    # the same numbers as the library on the same images and noise
    from guided_diffusion.image_datasets import ImageDataset

    model, diffusion = create_model_and_diffusion(**MODEL)
    model.load_state_dict(torch.load(files["model"]))
    x, _ = ImageDataset(files["data"], 8, image_channels=1).get_batch(range(NUM))
    direct = bpd_terms(model.eval(), diffusion, x, torch.arange(NUM), seed=5)
    assert np.allclose(arrays["total_bpd"], direct["total_bpd"].double().numpy(), atol=1e-5)


def test_script_stratified(files, tmp_path):
    out = str(tmp_path / "strata")
    summary = run_here(files, out, t_strata=4)
    assert summary["estimator"] == "stratified" and summary["terms_per_image"] == 5 and summary["steps"] == 10
    with np.load(os.path.join(out, "vb_strata.npz")) as z:
        t, vb, weights = z["t"], z["vb"], z["weights"]
    assert t.shape == vb.shape == (NUM, 5) and weights.sum() == 10
    _, arrays = read_bpd(out)
    assert np.allclose(arrays["total_bpd"], arrays["prior_bpd"] + (vb * weights).sum(1), atol=1e-5)
    assert not os.path.exists(os.path.join(out, "vb_terms.npz"))
    assert not os.path.exists(os.path.join(out, "bpd.npz.parts"))


@pytest.mark.integration
def test_kill_and_resume_same_bytes(files, reference, tmp_path):
    res = run_proc(EXIT_AFTER_PARTS, ["1", SCRIPT, *flags(files, str(tmp_path), batch_size=3)])
    assert res.returncode == 137, res.stderr
    assert not (tmp_path / "bpd.json").exists()
    res = run_proc(SCRIPT, flags(files, str(tmp_path), batch_size=3))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "bpd.npz").read_bytes() == reference[1]
    assert "bits/dim" in res.stdout


@pytest.mark.mpi
@pytest.mark.integration
def test_two_processes_same_result(files, reference, tmp_path):
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec not installed")
    # batch 3: rank 0 takes images 0-2, rank 1 images 3-4, the reference's batches: the same bytes
    res = run_proc(SCRIPT, flags(files, str(tmp_path), batch_size=3), launcher=("mpiexec", "-n", "2"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "bpd.npz").read_bytes() == reference[1]
    # another batch size: the same up to the rounding of batched convolutions
    res = run_proc(SCRIPT, flags(files, str(tmp_path / "b1"), batch_size=1), launcher=("mpiexec", "-n", "2"))
    assert res.returncode == 0, res.stderr
    a, b = read_bpd(str(tmp_path / "b1"))[1]["total_bpd"], read_bpd(str(files["dir"] / "ref"))[1]["total_bpd"]
    assert np.allclose(a, b, atol=1e-5)


def test_changed_settings_refused(files, tmp_path, capsys):
    from guided_diffusion.cli import run_cli

    out = str(tmp_path)
    os.makedirs(os.path.join(out, "bpd.npz.parts"))
    import runpy

    main = runpy.run_path(SCRIPT)["main"]
    # leave a part behind with seed 5, then ask for seed 6
    from guided_diffusion.jobs import nll as nll_run

    original = nll_run.write_part
    try:
        def write_then_stop(*a, **k):
            original(*a, **k)
            raise KeyboardInterrupt

        nll_run.write_part = write_then_stop
        with pytest.raises(KeyboardInterrupt):
            main(flags(files, out))
    finally:
        nll_run.write_part = original
    with pytest.raises(SystemExit) as exc:
        run_cli(main, flags(files, out, seed=6))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed" in err[0] and "--overwrite True" in err[0]


@pytest.mark.integration
@pytest.mark.parametrize("change, expect", [
    (dict(data_dir="/nonexistent.npz"), "does not exist"),
    (dict(model_path="/nonexistent.pt"), "--model_path /nonexistent.pt: no such file"),
    (dict(num_channels=64), "does not fit the model flags"),
    (dict(num_samples=0), "must be >= 1"),
    (dict(t_strata=10), "--t_strata 10: use 0 (every timestep) or 1..9"),
])
def test_bad_inputs_one_line_exit_2(files, tmp_path, change, expect):
    res = run_proc(SCRIPT, flags(files, str(tmp_path / "o"), **change))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], res.stderr
    assert not (tmp_path / "o" / "bpd.json").exists()
