"""Classifier guidance: the classifier factory (official keys), the guidance gradient, where the loop applies it,
scripts/classifier_train.py and scripts/classifier_sample.py end to end (time shift, kill + resume, bad inputs).

Toy sizes: 8x8 grey images, 3 classes, 40 diffusion steps, ddim4.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from guided_diffusion.sampler.conditioning import ClassifierGuidance, classifier_log_prob_grad
from guided_diffusion.sampler.generate import LABEL_STREAM, SampleNoise
from guided_diffusion.cli import run_cli
from guided_diffusion.jobs.sample import GUIDANCE_GROUPS, SamplingJob
from guided_diffusion.script_util import (
    classifier_and_diffusion_defaults,
    classifier_defaults,
    create_classifier,
    create_classifier_and_diffusion,
    create_gaussian_diffusion,
    create_model_and_diffusion,
)
from official_configs import OFFICIAL_CLASSIFIER_CONFIGS
from helpers import EXIT_AFTER_PARTS, ROOT, argv_of, run_proc

TRAIN = os.path.join(ROOT, "scripts", "classifier_train.py")
SAMPLE = os.path.join(ROOT, "scripts", "classifier_sample.py")
MANIFESTS = json.load(open(os.path.join(ROOT, "tests", "data", "guidance_manifests.json")))

CLF = dict(image_size=8, image_channels=1, classifier_num_classes=3, classifier_width=32, classifier_depth=1,
           classifier_attention_resolutions="", classifier_pool="adaptive", classifier_channel_mult="1,2")
CLF_ALL = {**classifier_defaults(), **CLF}
MODEL = dict(image_size=8, image_channels=1, num_channels=32, channel_mult="1", num_res_blocks=1,
             attention_resolutions="", diffusion_steps=40, learn_sigma=True)
NUM = 5
NPZ = "adm_cifar_ddim4step_4win_5cut_cls2.npz"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A toy labelled npz, a random grey diffusion model and a random classifier (with non-zero head)."""
    folder = tmp_path_factory.mktemp("clf")
    rng = np.random.RandomState(0)
    data = str(folder / "toy.npz")
    np.savez(data, (rng.rand(24, 8, 8) * 255).astype(np.uint8), rng.randint(0, 3, 24))
    torch.manual_seed(0)
    model, _ = create_model_and_diffusion(**MODEL)
    torch.save(model.state_dict(), folder / "dm.pt")
    clf = create_classifier(**CLF_ALL)
    for p in clf.parameters():  # the head is zero-initialised: no gradient at all otherwise
        torch.nn.init.normal_(p, std=0.2)
    torch.save(clf.state_dict(), folder / "clf.pt")
    return {"dir": folder, "data": data, "model": str(folder / "dm.pt"), "clf": str(folder / "clf.pt")}


def sample_flags(files, out_dir, **extra):
    values = {**MODEL, **{k: v for k, v in CLF.items() if k not in MODEL}, "model_path": files["model"],
              "classifier_path": files["clf"], "classifier_scale": 2, "timestep_respacing": "ddim4",
              "use_ddim": True, "do_time_shift": True, "window": 4, "cutoff": 5, "num_samples": NUM,
              "batch_size": 2, "progress": False, "out_dir": out_dir, **extra}
    return argv_of(values)


def sample_here(files, out_dir, **extra):
    """classifier_sample.py's job, run in this process."""
    import runpy

    mod = runpy.run_path(SAMPLE)
    return mod["main"](sample_flags(files, out_dir, **extra))


# ------------------------------------------------------------------ factory and official checkpoints
def test_defaults_are_upstreams_and_the_factory_no_longer_crashes():
    d = classifier_defaults()
    assert {k: d[k] for k in ("image_size", "classifier_use_fp16", "classifier_width", "classifier_depth",
                              "classifier_attention_resolutions", "classifier_use_scale_shift_norm",
                              "classifier_resblock_updown", "classifier_pool")} == dict(
        image_size=64, classifier_use_fp16=False, classifier_width=128, classifier_depth=2,
        classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
        classifier_resblock_updown=True, classifier_pool="attention")
    with torch.device("meta"):  # upstream (TS-DPM-ADM) raised TypeError here: missing time-shift arguments
        clf, diffusion = create_classifier_and_diffusion(**classifier_and_diffusion_defaults())
    assert clf.out[2].c_proj.weight.shape[0] == 1000
    assert clf.input_blocks[0][0].weight.shape[1] == 3
    assert diffusion.num_timesteps == 1000


@pytest.mark.parametrize("name", sorted(OFFICIAL_CLASSIFIER_CONFIGS))
def test_official_classifier_keys_and_shapes(name):
    """Keys/shapes equal the committed manifest (made by tests/tools/make_guidance_manifests.py from our
    factory: a regression guard, NOT compared with the released files, which were not available offline)."""
    with torch.device("meta"):
        sd = create_classifier(**OFFICIAL_CLASSIFIER_CONFIGS[name]).state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == MANIFESTS[name]


@pytest.mark.parametrize("name, tensors, params", [("imagenet64_classifier", 307, 65_438_568),
                                                   ("imagenet128_classifier", 221, 42_568_040),
                                                   ("imagenet256_classifier", 249, 54_096_360)])
def test_official_classifier_parameter_counts(name, tensors, params):
    with torch.device("meta"):
        sd = create_classifier(**OFFICIAL_CLASSIFIER_CONFIGS[name]).state_dict()
    assert len(sd) == tensors and sum(v.numel() for v in sd.values()) == params
    assert sd["out.2.c_proj.weight"].shape == (1000, 512, 1)  # 1000 classes from the last 512 channels
    assert "out.2.positional_embedding" in sd


def test_grey_ten_class_classifier():
    clf = create_classifier(**{**CLF_ALL, "classifier_num_classes": 10})
    assert clf(torch.randn(2, 1, 8, 8), torch.tensor([0, 39])).shape == (2, 10)


# ------------------------------------------------------------------ the gradient and where it acts
class _SmoothClassifier(torch.nn.Module):
    """A float64 (x, t) -> logits network (tanh features, t-dependent), for finite differences."""

    def __init__(self, features, classes):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.w1 = torch.randn(features, 16, generator=gen, dtype=torch.float64) / features**0.5
        self.w2 = torch.randn(16, classes, generator=gen, dtype=torch.float64)

    def forward(self, x, t):
        h = torch.tanh(x.reshape(x.shape[0], -1) @ self.w1 * (1 + t[:, None].double() / 40))
        return h @ self.w2


def test_guidance_gradient_matches_finite_differences():
    """cond_fn = s * d/dx log softmax(f(x_t, t))[y], checked coordinate-wise by central differences."""
    clf = _SmoothClassifier(64, 3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    t, y, scale = torch.tensor([3, 30]), torch.tensor([2, 0]), 1.7
    grad = ClassifierGuidance(clf, scale, 3).cond_fn(x, t, y=y)
    assert grad.shape == x.shape and grad.dtype == torch.float64

    def objective(z):
        with torch.no_grad():
            return float(torch.log_softmax(clf(z, t), dim=-1)[torch.arange(2), y].sum()) * scale

    h = 1e-6
    for flat in torch.randint(0, x.numel(), (12,), generator=gen).tolist():
        e = torch.zeros(x.numel(), dtype=torch.float64)
        e[flat] = h
        e = e.view_as(x)
        fd = (objective(x + e) - objective(x - e)) / (2 * h)
        assert abs(fd - grad.view(-1)[flat].item()) < 1e-7 * max(1.0, abs(fd))
    assert grad.abs().max() > 1e-2
    # the real classifier: the same function of its logits (autograd through the EncoderUNet)
    torch.manual_seed(1)
    real = create_classifier(**CLF_ALL)
    for p in real.parameters():
        torch.nn.init.normal_(p, std=0.2)
    xf = x.float().requires_grad_(True)
    torch.log_softmax(real(xf, t), dim=-1)[torch.arange(2), y].sum().backward()
    assert torch.allclose(classifier_log_prob_grad(real, x.float(), t, y, scale), xf.grad * scale, atol=1e-6)


def test_score_form_and_mean_form():
    """DDIM: eps' = eps - sqrt(1 - a_t) g; DDPM: mean' = mean + Sigma g (Dhariwal & Nichol alg. 2 / 1)."""
    diffusion = create_gaussian_diffusion(steps=40, learn_sigma=True, noise_schedule="cosine",
                                          timestep_respacing="ddim4")
    torch.manual_seed(0)
    model, _ = create_model_and_diffusion(**MODEL)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([2, 2])
    g = torch.randn(2, 1, 8, 8)
    cond_fn = lambda x_, t_, **kw: g  # noqa: E731
    with torch.no_grad():
        plain = diffusion.step_predictions("ddim", model, x, t, clip_denoised=False)
        guided = diffusion.step_predictions("ddim", model, x, t, clip_denoised=False, cond_fn=cond_fn)
        a = float(diffusion.alphas_cumprod[2])
        eps = (x - a**0.5 * plain["pred_xstart"]) / (1 - a) ** 0.5
        want = (x - (1 - a) ** 0.5 * (eps - (1 - a) ** 0.5 * g)) / a**0.5
        assert torch.allclose(guided["pred_xstart"], want, atol=1e-5)
        t0 = torch.tensor([0, 0])
        pred = diffusion.model_predictions(model, x, t0, clip_denoised=False)
        unguided = diffusion.ddpm_step(model, x, t0, pred=pred, is_last=True)["sample"]
        out = diffusion.ddpm_step(model, x, t0, pred=pred, is_last=True, cond_fn=cond_fn)["sample"]
        var = diffusion.p_mean_variance(model, x, t0, clip_denoised=False)["variance"]
        assert torch.allclose(out, unguided + var * g, atol=1e-5)


def test_labels_come_from_the_per_sample_stream():
    guidance = ClassifierGuidance(torch.nn.Identity(), 1.0, 3)
    idx = torch.arange(7)
    labels, kwargs = guidance.inputs(idx, SampleNoise(4), None)
    assert torch.equal(labels, SampleNoise(4).integers(idx, LABEL_STREAM, 3))
    assert kwargs["y"] is labels
    with pytest.raises(ValueError, match="exceeds"):
        ClassifierGuidance(torch.nn.Identity(), 1.0, 2000).inputs(idx, SampleNoise(0), 1000)


def test_unguided_job_has_no_guidance_groups():
    job = SamplingJob.from_flags({"classifier_scale": 3.0})
    assert job.extras() == () and job.output_filename() == "adm_cifar_step.npz"
    assert "classifier_width" not in job.pixel_settings()
    guided = SamplingJob.from_flags({"classifier_scale": 3.0, "classifier_path": "c.pt"}, extras=GUIDANCE_GROUPS)
    assert guided.output_filename() == "adm_cifar_step_cls3.npz"
    assert guided.pixel_settings()["classifier_scale"] == 3.0
    assert guided.with_flags(seed=2).extras() == GUIDANCE_GROUPS


# ------------------------------------------------------------------ classifier_sample.py
def test_guided_sampling_batch_size_free_and_scale_matters(files, tmp_path):
    a = sample_here(files, str(tmp_path / "a"), batch_size=2)
    b = sample_here(files, str(tmp_path / "b"), batch_size=3)
    assert open(a, "rb").read() == open(b, "rb").read()
    z = np.load(a)
    assert z["arr_0"].shape == (NUM, 8, 8, 3)
    assert np.array_equal(z["arr_1"], SampleNoise(0).integers(torch.arange(NUM), LABEL_STREAM, 3).numpy())
    c = sample_here(files, str(tmp_path / "c"), classifier_scale=0)
    zero = np.load(c)["arr_0"].astype(int)
    assert (np.load(a)["arr_0"].astype(int) != zero).any()  # the gradient changes the samples
    # scale 0: the unguided sampler up to rounding (the score path re-derives eps from x0)
    import runpy

    plain = runpy.run_path(os.path.join(ROOT, "scripts", "image_sample.py"))["main"](argv_of({
        **MODEL, "model_path": files["model"], "timestep_respacing": "ddim4", "use_ddim": True,
        "do_time_shift": True, "window": 4, "cutoff": 5, "num_samples": NUM, "batch_size": 2, "progress": False,
        "out_dir": str(tmp_path / "plain")}))
    assert np.abs(np.load(plain)["arr_0"].astype(int) - zero).max() <= 1


@pytest.mark.integration
def test_guided_kill_and_resume_same_bytes(files, tmp_path):
    ref = sample_here(files, str(tmp_path / "ref"), batch_size=2)
    out = tmp_path / "run"
    res = run_proc(EXIT_AFTER_PARTS, ["1", SAMPLE, *sample_flags(files, str(out), batch_size=2)])
    assert res.returncode == 137, res.stderr
    assert len(os.listdir(out / (NPZ + ".parts"))) == 2  # meta + one part
    res = run_proc(SAMPLE, sample_flags(files, str(out), batch_size=3))
    assert res.returncode == 0, res.stderr
    assert (out / NPZ).read_bytes() == open(ref, "rb").read()
    meta = json.loads((out / NPZ.replace(".npz", ".json")).read_text())
    assert len(meta["classifier_sha256"]) == 64 and meta["settings"]["classifier_scale"] == 2.0


def test_resume_with_another_classifier_refused(files, tmp_path, capsys):
    out = str(tmp_path)
    sample_here(files, out, keep_parts=True)
    other = tmp_path / "other.pt"
    sd = torch.load(files["clf"])
    sd["out.3.bias"] = sd["out.3.bias"] + 1
    torch.save(sd, other)
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda argv: sample_here(files, out, keep_parts=True, classifier_path=str(other)))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "classifier_sha256" in err


@pytest.mark.integration
@pytest.mark.parametrize("change, expect", [
    (dict(classifier_path="/nonexistent/clf.pt"), "--classifier_path /nonexistent/clf.pt: no such file"),
    (dict(classifier_width=64), "--classifier_path"),
    (dict(classifier_num_classes=0), "must be >= 1"),
    (dict(classifier_scale="nan"), "finite number expected"),
])
def test_bad_inputs_one_line_exit_2_no_file(files, tmp_path, change, expect):
    res = run_proc(SAMPLE, sample_flags(files, str(tmp_path), **change))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], res.stderr
    assert not any(name.endswith(".npz") for name in os.listdir(tmp_path))


# ------------------------------------------------------------------ classifier_train.py
def train_flags(files, out_dir, **extra):
    values = {**CLF, "data_dir": files["data"], "val_data_dir": files["data"], "diffusion_steps": 40,
              "batch_size": 4, "iterations": 4, "anneal_lr": True, "log_interval": 2, "eval_interval": 2,
              "save_interval": 2, "out_dir": out_dir, **extra}
    return argv_of(values)


@pytest.mark.integration
def test_train_resume_exact_and_loads_in_sampling(files, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    res = run_proc(TRAIN, train_flags(files, str(straight)))
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(straight)) == ["args.json", "log.txt", "model000002.pt", "model000004.pt",
                                            "opt000002.pt", "opt000004.pt", "progress.csv"]
    res = run_proc(TRAIN, train_flags(files, str(resumed), max_steps=2))
    assert res.returncode == 0, res.stderr
    res = run_proc(TRAIN, train_flags(files, str(resumed), resume_checkpoint=str(resumed / "model000002.pt")))
    assert res.returncode == 0, res.stderr
    a, b = torch.load(straight / "model000004.pt"), torch.load(resumed / "model000004.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    header = (straight / "progress.csv").read_text().splitlines()[0].split(",")
    for key in ("train_loss", "train_acc@1", "train_acc@5", "val_loss", "val_acc@1", "lr"):
        assert key in header
    assert any(k.startswith("train_loss_q") for k in header)
    opt = torch.load(straight / "opt000004.pt")
    assert opt["step"] == 4
    # the trained file is a --classifier_path
    path = sample_here({**files, "clf": str(straight / "model000004.pt")}, str(tmp_path / "s"), num_samples=2)
    assert np.load(path)["arr_0"].shape == (2, 8, 8, 3)


@pytest.mark.integration
@pytest.mark.parametrize("change, expect", [
    (dict(data_dir="/nonexistent.npz"), "does not exist"),
    (dict(classifier_num_classes=2), "labels go up to 2"),
    (dict(iterations=0), "train forever"),
])
def test_train_bad_inputs(files, tmp_path, change, expect):
    res = run_proc(TRAIN, train_flags(files, str(tmp_path / "o"), **change))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], res.stderr
    assert not (tmp_path / "o").exists()


def test_noised_inputs_and_eval_are_deterministic(files):
    """The step's noised batch depends only on (seed, step); --noised False gives t = 0 and clean inputs."""
    from guided_diffusion.classifier_train_util import ClassifierTrainLoop
    from guided_diffusion.image_datasets import ImageDataset, StepBatcher

    ds = ImageDataset(files["data"], 8, class_cond=True, image_channels=1)
    torch.manual_seed(0)
    clf, diffusion = create_classifier_and_diffusion(**{**CLF, "diffusion_steps": 40})

    def loop(noised):
        return ClassifierTrainLoop(model=clf, diffusion=diffusion, data=StepBatcher(ds, 4, seed=0), batch_size=4,
                                   microbatch=-1, lr=1e-3, log_interval=10, save_interval=0, noised=noised,
                                   iterations=3, val_data=StepBatcher(ds, 4, seed=1), rank=0, world_size=1)

    a, b, clean = loop(True), loop(True), loop(False)
    batch, _ = a.data.batch(0)
    a._sample_shape = b._sample_shape = tuple(batch.shape[1:])
    (ta, _, na, _), (tb, _, nb, _) = a.step_randomness(), b.step_randomness()
    assert torch.equal(ta, tb) and torch.equal(na, nb)
    xa, _ = a._inputs(batch, ta, na)
    assert not torch.equal(xa, batch)
    xc, tc = clean._inputs(batch, ta, na)
    assert torch.equal(xc, batch) and not tc.any()
    assert a.current_lr(0) == 1e-3 and a.current_lr(2) == 1e-3  # anneal_lr off by default


def test_classifier_accuracy_script(files, tmp_path):
    """scripts/classifier_accuracy.py on guided samples: acc@1 equals the classifier's argmax agreement."""
    import runpy

    path = sample_here(files, str(tmp_path / "s"))
    main = runpy.run_path(os.path.join(ROOT, "scripts", "classifier_accuracy.py"))["main"]
    flags = {k: v for k, v in CLF.items()}
    result = main(argv_of({**flags, "samples": path, "classifier_path": files["clf"], "batch_size": 2,
                           "out_json": str(tmp_path / "acc.json")}))
    z = np.load(path)
    clf = create_classifier(**CLF_ALL)
    clf.load_state_dict(torch.load(files["clf"]))
    x = torch.from_numpy(z["arr_0"]).permute(0, 3, 1, 2).float()[:, :1] / 127.5 - 1
    with torch.no_grad():
        pred = clf.eval()(x, torch.zeros(NUM, dtype=torch.long)).argmax(-1).numpy()
    assert result["acc@1"] == float((pred == z["arr_1"]).mean())
    assert result["acc@5"] == 1.0  # 3 classes
    assert json.loads((tmp_path / "acc.json").read_text())["num_images"] == NUM


def test_class_rows_one_row_per_class():
    """class_rows: row c holds the first per_class images labelled c, in order; short rows padded black."""
    from guided_diffusion.jobs.figures import class_rows

    images = np.arange(1, 7, dtype=np.uint8).reshape(6, 1, 1, 1) * 10  # image k has value 10 (k + 1)
    labels = np.array([2, 0, 2, 0, 2, 0])
    rows = class_rows(images, labels, per_class=2, num_classes=3)
    assert rows[:, 0, 0, 0].tolist() == [20, 40, 0, 0, 10, 30]


def test_classifier_accuracy_class_grid_and_bad_labels(files, tmp_path, capsys):
    """--class_grid writes a 3-row PNG; labels outside the classifier's classes: one line, exit 2, no file."""
    import runpy

    from PIL import Image

    path = sample_here(files, str(tmp_path / "s"))
    script = os.path.join(ROOT, "scripts", "classifier_accuracy.py")
    main = runpy.run_path(script)["main"]
    base = {**CLF, "samples": path, "classifier_path": files["clf"], "batch_size": 2}
    main(argv_of({**base, "class_grid": str(tmp_path / "rows.png"), "per_class": 2}))
    assert Image.open(tmp_path / "rows.png").size == (2 + 2 * 10, 2 + 3 * 10)  # 8 px images, 2 px gaps
    z = dict(np.load(path))
    z["arr_1"] = z["arr_1"] + 3
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, **z)
    out = str(tmp_path / "bad.json")
    proc = subprocess.run([sys.executable, script] + argv_of({**base, "samples": bad, "out_json": out}),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--classifier_num_classes" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not os.path.exists(out)


def test_pndm_warmup_stages_are_guided_too():
    """S-/F-PNDM's extra network calls get the same score-form guidance as the main call."""
    from guided_diffusion.sampler.loop import _pndm_stage_arguments

    diffusion = create_gaussian_diffusion(steps=40, noise_schedule="cosine", timestep_respacing="ddim4")
    net = lambda x, t, **kw: 0.3 * x + t[:, None, None, None] / 100  # noqa: E731
    g = torch.randn(2, 1, 8, 8)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([12.5, 20.0], dtype=torch.float64)
    a = torch.tensor([0.6, 0.4], dtype=torch.float64)
    args = (diffusion, net, x, 30, 20, None, None, 4, False, None, {})
    plain = _pndm_stage_arguments(*args)["eval_eps"](x, t, a)
    guided = _pndm_stage_arguments(*args, cond_fn=lambda x_, t_, **kw: g)["eval_eps"](x, t, a)
    want = plain - torch.sqrt(1 - a).float().reshape(2, 1, 1, 1) * g
    assert torch.allclose(guided, want, atol=1e-6)


@pytest.mark.parametrize("solver", ["ddpm", "dpm++2m", "f-pndm"])
def test_guided_sampling_with_other_solvers(files, tmp_path, solver):
    path = sample_here(files, str(tmp_path), use_ddim=False, solver=solver, num_samples=2)
    assert np.load(path)["arr_0"].shape == (2, 8, 8, 3)
