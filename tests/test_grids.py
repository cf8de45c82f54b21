"""Time grids (guided_diffusion/sampler/grids.py) and the grid optimizer (guided_diffusion/jobs/grid_opt.py)."""

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from guided_diffusion.respace import space_timesteps
from guided_diffusion.sampler import grids
from guided_diffusion.sampler.loop import Sampler, final_sample, sample_loop_progressive
from guided_diffusion.schedules import get_named_beta_schedule
from guided_diffusion.script_util import create_gaussian_diffusion
from reference_models import AnalyticEpsModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COSINE = np.cumprod(1.0 - get_named_beta_schedule("cosine", 1000))


def _cosine(T):
    return np.cumprod(1.0 - get_named_beta_schedule("cosine", T))


# ----------------------------------------------------------------------- upstream grids unchanged
def test_upstream_strings_give_the_recorded_timesteps():
    """Outputs of the parser this module replaced, recorded for 1,340 (T, string) pairs before it was
    removed: every result is identical (sha256 of the sorted list) and every error is still an error."""
    cases = json.load(open(os.path.join(ROOT, "tests", "data", "upstream_grids.json")))
    assert len(cases) > 1000
    for c in cases:
        if "error" in c:
            with pytest.raises(ValueError):
                space_timesteps(c["T"], c["spec"])
            continue
        out = sorted(space_timesteps(c["T"], c["spec"]))
        assert len(out) == c["n"] and hashlib.sha256(json.dumps(out).encode()).hexdigest()[:16] == c["sha"], c
        if "steps" in c:
            assert out == c["steps"]


def test_upstream_grids_from_first_principles():
    assert sorted(space_timesteps(1000, "ddim10")) == list(range(0, 1000, 100))
    assert sorted(space_timesteps(1000, "quad10")) == sorted({int(x * x) for x in np.linspace(0, np.sqrt(800), 10)})
    assert sorted(space_timesteps(1000, "pndm10")) == list(range(1, 1000, 100))[:-1]
    assert sorted(space_timesteps(1000, "10")) == [round(i * 999 / 9) for i in range(10)]
    assert space_timesteps(1000, [10]) == space_timesteps(1000, "10")


# ------------------------------------------------------------------------------------ families
def test_trailing_equals_the_formula_written_out():
    """diffusers' "trailing": round(arange(T, 0, -T/N)) - 1."""
    assert grids.parse_grid("trailing10", 1000).timesteps == (999, 899, 799, 699, 599, 499, 399, 299, 199, 99)
    assert grids.parse_grid("trailing5", 1000).timesteps == (999, 799, 599, 399, 199)
    # T/N = 333.33: 1000, 666.67, 333.33 rounded, minus 1
    assert grids.parse_grid("trailing3", 1000).timesteps == (999, 666, 332)
    # T/N = 142.857: 1000, 857.14, 714.29, 571.43, 428.57, 285.71, 142.86
    assert grids.parse_grid("trailing7", 1000).timesteps == (999, 856, 713, 570, 428, 285, 142)
    assert grids.parse_grid("trailing4", 50).timesteps == (49, 37, 24, 11)  # 50, 37.5 -> 38 (half to even), 25, 12.5 -> 12
    assert grids.parse_grid("trailing1", 1000).timesteps == (999,)


@pytest.mark.parametrize("T, n", [(1000, 5), (1000, 10), (1000, 7), (1000, 20), (1000, 3), (50, 4), (4000, 33)])
def test_trailing_matches_diffusers(T, n):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    sched.set_timesteps(n)
    assert grids.parse_grid(f"trailing{n}", T).timesteps == tuple(int(t) for t in sched.timesteps)


@pytest.mark.parametrize("T, n", [(1000, 10), (1000, 7), (50, 4)])
def test_linspace_matches_diffusers(T, n):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="linspace")
    sched.set_timesteps(n)
    assert grids.parse_grid(f"linspace{n}", T).timesteps == tuple(int(t) for t in sched.timesteps)
    assert grids.parse_grid("linspace10", 1000).timesteps == (999, 888, 777, 666, 555, 444, 333, 222, 111, 0)


def test_logsnr_and_karras_follow_their_formulas():
    sig = np.sqrt((1 - COSINE) / COSINE)
    lam = -np.log(sig)
    top = min(sig[-1], 80.0)
    ts = grids.parse_grid("logsnr10", 1000, COSINE).timesteps
    want = np.linspace(-np.log(top), lam[0], 10)
    assert ts == tuple(int(np.argmin(np.abs(lam - w))) for w in want)
    for rho in (7.0, 3.0):
        ts = grids.parse_grid(f"karras10:{rho:g}", 1000, COSINE).timesteps
        s = (top ** (1 / rho) + np.arange(10) / 9 * (sig[0] ** (1 / rho) - top ** (1 / rho))) ** rho
        assert ts == tuple(int(np.argmin(np.abs(np.log(sig) - np.log(v)))) for v in s)
    assert grids.parse_grid("karras10", 1000, COSINE).timesteps == grids.parse_grid("karras10:7:80", 1000, COSINE).timesteps
    # sigma_max 80 is t = 991 on the cosine table; both start there
    assert grids.parse_grid("karras5", 1000, COSINE).timesteps[0] == 991 == grids.parse_grid("logsnr5", 1000, COSINE).timesteps[0]


FAMILY = st.sampled_from(["ddim", "quad", "pndm", "", "trailing", "linspace", "logsnr", "karras"])


@settings(max_examples=200, deadline=None)
@given(T=st.integers(1, 1200), frac=st.floats(0, 1), family=FAMILY)
def test_every_family_parses_to_strictly_decreasing_valid_timesteps(T, frac, family):
    n = 1 + int(frac * (T - 1))
    ab = _cosine(T)
    spec = f"{family}{n}"
    try:
        grid = grids.parse_grid(spec, T, ab)
    except ValueError as e:
        msg = str(e)
        assert "\n" not in msg and spec in msg
        # only the families whose rounding can repeat (or whose N has no exact stride) may refuse
        assert family in ("ddim", "quad", "pndm", "logsnr", "karras"), msg
        if family in ("logsnr", "karras", "quad"):
            largest = int(msg.split(f"use {'quad' if family == 'quad' else family}")[1].split()[0])
            assert len(grids.parse_grid(f"{family}{largest}", T, ab).timesteps) == largest
        return
    ts = list(grid.timesteps)
    assert ts and all(0 <= t < T for t in ts) and all(a > b for a, b in zip(ts, ts[1:]))
    if family in ("trailing", "linspace"):  # both start at T - 1 (linspace1 is [0], as diffusers)
        assert len(ts) == n and ts[0] == (T - 1 if n > 1 or family == "trailing" else 0)
    elif family != "pndm":
        assert len(ts) == n


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 999), min_size=1, max_size=30, unique=True))
def test_explicit_lists_round_trip(ts):
    ts = sorted(ts, reverse=True)
    assert grids.parse_grid("t:" + ",".join(map(str, ts)), 1000).timesteps == tuple(ts)


@pytest.mark.parametrize("spec, match", [
    ("t:5,5", "repeats"), ("t:5,9", "strictly decreasing"), ("t:1000,5", "out of range"), ("t:-1", "out of range"),
    ("t:", "integer"), ("t:9,x", "integer"), ("trailing0", ">= 1"), ("trailing1001", "repeats"),
    ("linspace0", ">= 1"), ("karras10:0", "rho"), ("karras10:7:1e9", "use karras5"), ("logsnr40", "use logsnr39"),
    ("logsnr10:1:2", "logsnrN:smax"), ("karras5:a", "numbers"), ("bogus", "unknown grid"), ("trailing5:2", "no options"),
])
def test_bad_grids_get_one_line_naming_the_problem(spec, match):
    with pytest.raises(ValueError, match=match) as e:
        grids.parse_grid(spec, 1000, COSINE)
    assert "\n" not in str(e.value)


def test_schedule_families_need_the_table():
    with pytest.raises(ValueError, match="alpha_bar"):
        space_timesteps(1000, "karras10")
    assert len(space_timesteps(1000, "karras10", COSINE)) == 10


def test_file_names_stay_upstream_and_become_safe():
    assert grids.grid_label("ddim10") == "ddim10" and grids.grid_label("10,20") == "10,20"
    assert grids.grid_label("karras10:5") == "karras10-5"
    assert grids.grid_label("file:out/grid_ddim_10.json") == "file-grid_ddim_10"
    assert grids.grid_label("t:999,500,0").startswith("t3-") and "/" not in grids.grid_label("t:999,500,0")


# --------------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize("spec", ["trailing10", "linspace10", "t:999,700,400,200,100,50,20,0"])
def test_grid_that_starts_at_T_minus_1_is_sampled_from_its_start(spec):
    d = create_gaussian_diffusion(noise_schedule="cosine", timestep_respacing=spec)
    assert d.shift_uses_grid
    want = [int(t) for t in grids.parse_grid(spec, 1000).timesteps]
    assert [int(t) for t in reversed(d.timestep_map)] == want and want[0] == 999
    seen = []
    model = AnalyticEpsModel(torch.zeros(1, 3, 4, 4), 0.5, 0.0, d.base_alphas_cumprod, learn_sigma=False)
    for out in sample_loop_progressive(d, model, (2, 3, 4, 4), Sampler("ddim")):
        seen.append(out["timestep"])
    assert seen == want


def test_upstream_grids_keep_the_upstream_shift_target():
    for spec in ("ddim10", "quad10", "pndm10", "10", "10,20"):
        assert not create_gaussian_diffusion(noise_schedule="cosine", timestep_respacing=spec).shift_uses_grid


def test_shift_target_uses_the_grids_own_next_timestep():
    from guided_diffusion.sampler.time_shift import TimeShift, shift_target

    ab = torch.as_tensor(COSINE)
    ts = TimeShift(window=10, cutoff=0, rule="adm")
    x = torch.randn(3, 3, 8, 8)
    # cur 400 -> nxt 100 (a gap of 300 that a T // (S - 1) stride would not know)
    res = shift_target(x, ab, ts=ts, cur=400, nxt=100, num_steps=10, grid_target=True)
    idx = 100 + (res.timesteps - 400)
    assert torch.equal(res.target_alphas_cumprod, ab[idx])
    old = shift_target(x, ab, ts=ts, cur=400, nxt=100, num_steps=10)
    assert torch.equal(old.target_alphas_cumprod, ab[old.timesteps - 1000 // 9 - 1])
    # the last step: nxt = -1 -> clean
    last = shift_target(x, ab, ts=ts, cur=3, nxt=-1, num_steps=10, grid_target=True)
    assert torch.equal(last.target_alphas_cumprod[last.timesteps <= 3], torch.ones_like(last.target_alphas_cumprod[last.timesteps <= 3]))


def test_shift_with_window_zero_is_plain_on_every_family():
    from guided_diffusion.sampler.time_shift import TimeShift

    for spec in ("trailing8", "karras8", "logsnr8"):
        d = create_gaussian_diffusion(noise_schedule="cosine", timestep_respacing=spec)
        model = AnalyticEpsModel(torch.zeros(1, 3, 4, 4), 0.5, 0.1, d.base_alphas_cumprod, learn_sigma=False)
        noise = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
        for kind in ("ddim", "dpm++2m", "ipndm"):
            plain = final_sample(sample_loop_progressive(d, model, noise.shape, Sampler(kind), noise=noise))
            off = final_sample(sample_loop_progressive(d, model, noise.shape, Sampler(kind, time_shift=TimeShift(0, 300)),
                                                       noise=noise))
            on = final_sample(sample_loop_progressive(d, model, noise.shape, Sampler(kind, time_shift=TimeShift(20, 100)),
                                                      noise=noise))
            assert torch.equal(plain, off) and torch.isfinite(on).all()


# ------------------------------------------------------------------------------------ grid files
def test_grid_files_round_trip_and_a_wrong_checkpoint_is_refused(tmp_path):
    from guided_diffusion.io_util import write_text_atomic

    doc = grids.grid_document([999, 500, 120, 3], num_timesteps=1000, checkpoint_sha256="ab" * 32, solver="ddim",
                              cost=0.5)
    path = tmp_path / "g.json"
    write_text_atomic(str(path), json.dumps(doc))
    back = grids.read_grid_file(str(path), num_timesteps=1000)
    assert back == doc
    g = grids.parse_grid(f"file:{path}", 1000)
    assert g.timesteps == (999, 500, 120, 3) and g.family == "file" and not g.upstream
    assert grids.check_grid_checkpoint(f"file:{path}", "ab" * 32) is None
    assert grids.check_grid_checkpoint(f"file:{path}", "ab" * 32, solver="ddim") is None
    note = grids.check_grid_checkpoint(f"file:{path}", "ab" * 32, solver="dpm++2m")
    assert note.startswith("note: grid file") and "--solver ddim, not dpm++2m" in note and "\n" not in note
    with pytest.raises(ValueError, match="made for checkpoint"):
        grids.check_grid_checkpoint(f"file:{path}", "cd" * 32)
    with pytest.raises(ValueError, match="T = 1000"):
        grids.parse_grid(f"file:{path}", 500)
    for text, match in (("{", "unreadable"), ('{"format": "x"}', "not a grid file"),
                        (json.dumps({**doc, "timesteps": [5, 9]}), "strictly decreasing")):
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            grids.parse_grid(f"file:{path}", 1000)
    with pytest.raises(ValueError, match="no such file"):
        grids.parse_grid(f"file:{tmp_path}/missing.json", 1000)


def test_sampling_refuses_a_grid_made_for_another_checkpoint(tmp_path, tiny_checkpoint):
    path, flags, argv = tiny_checkpoint
    doc = grids.grid_document([999, 400, 50], num_timesteps=1000, checkpoint_sha256="0" * 64, solver="ddim")
    (tmp_path / "g.json").write_text(json.dumps(doc))
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "image_sample_1gpu.py"), *argv, "--num_samples", "2",
           "--batch_size", "2", "--use_ddim", "True", "--timestep_respacing", f"file:{tmp_path}/g.json",
           "--out_dir", str(tmp_path / "out"), "--progress", "False"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "made for checkpoint" in res.stderr, res.stderr
    assert not (tmp_path / "out").exists() or not any(n.endswith(".npz") for n in os.listdir(tmp_path / "out"))
    doc["checkpoint_sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    (tmp_path / "g.json").write_text(json.dumps(doc))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (meta_path,) = (tmp_path / "out").glob("*file-g*step.json")
    assert json.load(open(meta_path))["timesteps"] == [999, 400, 50]


# ---------------------------------------------------------------------------- the optimizer
def test_dynamic_programme_finds_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    for _ in range(300):
        m = int(rng.integers(1, 9))
        k = int(rng.integers(1, m + 1))
        cost = rng.random((m + 1, m + 1)) * rng.choice([1.0, 10.0], size=(m + 1, m + 1))
        nodes, total = grids.best_path(cost, k)
        brute = min(
            (sum(cost[a, b] for a, b in zip((0,) + mid, mid + (m,))), (0,) + mid + (m,))
            for mid in itertools.combinations(range(1, m), k - 1)
        )
        assert len(nodes) == k + 1 and nodes[0] == 0 and nodes[-1] == m and list(nodes) == sorted(set(nodes))
        assert total == pytest.approx(brute[0], rel=1e-12) and tuple(nodes) == brute[1]
    with pytest.raises(ValueError, match="steps 5"):
        grids.best_path(np.zeros((4, 4)), 5)


def _gaussian_teacher(fine, s=0.5, b=64, shape=(3, 8, 8)):
    """Exact probability-flow trajectories of x0 ~ N(0, s^2 I): x_t = x_top sqrt(v_t / v_top),
    v_t = a_t s^2 + 1 - a_t; the exact x0 prediction E[x0 | x_t] = sqrt(a_t) s^2 x_t / v_t."""
    a = np.append(COSINE[fine], 1.0)
    v = a * s * s + 1 - a
    x_top = torch.randn((b,) + shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    states = torch.stack([x_top * np.sqrt(v[m] / v[0]) for m in range(len(a))], 1)
    preds = torch.stack([np.sqrt(a[m]) * s * s * states[:, m] / v[m] for m in range(len(fine))], 1)
    return states.numpy(), preds.numpy(), a, x_top


@pytest.mark.parametrize("k", [5, 10])
def test_optimized_grid_beats_uniform_for_ddim_on_gaussian_data(k):
    from guided_diffusion.jobs.grid_opt import step_costs

    fine = list(grids.parse_grid("trailing60", 1000).timesteps)
    states, preds, a, x_top = _gaussian_teacher(fine)
    cost = step_costs(states, preds, a, "ddim") / states.shape[0]
    nodes, _ = grids.best_path(cost, k)
    uniform = list(np.round(np.linspace(0, len(fine), k + 1)).astype(int))
    exact = torch.from_numpy(states[:, -1]).float()

    def final_error(node_list):
        spec = "t:" + ",".join(str(fine[n]) for n in node_list[:-1])
        d = create_gaussian_diffusion(noise_schedule="cosine", timestep_respacing=spec)
        model = AnalyticEpsModel(torch.zeros(1, 3, 8, 8), 0.5, 0.0, d.base_alphas_cumprod, learn_sigma=False)
        out = final_sample(sample_loop_progressive(d, model, exact.shape, Sampler("ddim", clip_denoised=False),
                                                   noise=x_top.float()))
        return float((out - exact).square().mean().sqrt())

    opt, uni = final_error(nodes), final_error(uniform)
    assert opt <= uni, (nodes, opt, uni)


def _optimizer_args(argv, out_dir, *extra):
    return [*argv, "--fine_grid", "trailing12", "--grid_steps", "3,5", "--num_trajectories", "4", "--batch_size", "2",
            "--out_dir", str(out_dir), "--progress", "False", *extra]


def test_optimizer_end_to_end_caches_and_resumes(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    import importlib.util

    from guided_diffusion.errors import Preempted
    from guided_diffusion.jobs import control

    spec = importlib.util.spec_from_file_location("optimize_grid", os.path.join(ROOT, "scripts", "optimize_grid.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    path, flags, argv = tiny_checkpoint

    # 1. stopped by a signal after the first batch: one part kept, the resume command printed
    calls = {"n": 0}

    def fake_stop(signals):
        calls["n"] += 1
        return signal.SIGTERM

    monkeypatch.setattr(control, "stop_requested_anywhere", fake_stop)
    with pytest.raises(Preempted) as e:
        script.main(_optimizer_args(argv, tmp_path / "a"))
    assert e.value.exit_code == 143 and calls["n"] == 1
    assert "resume with:" in capsys.readouterr().err
    (cache,) = [p for p in (tmp_path / "a").iterdir() if p.name.startswith("teacher-")]
    assert sorted(p.name for p in cache.glob("part-*")) == ["part-000000-000002.npz"]
    monkeypatch.undo()

    # 2. resumed: only the missing batch runs; grid files for K = 3 and 5
    script.main(_optimizer_args(argv, tmp_path / "a"))
    out = capsys.readouterr().out
    assert "2 of 4 trajectories to run" in out
    docs = {k: json.load(open(tmp_path / "a" / f"grid_ddim_{k}.json")) for k in (3, 5)}
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    fine = list(grids.parse_grid("trailing12", 1000).timesteps)
    for k, doc in docs.items():
        assert doc["checkpoint_sha256"] == sha and doc["T"] == 1000 and doc["solver"] == "ddim"
        assert len(doc["timesteps"]) == k and doc["timesteps"][0] == 999 and set(doc["timesteps"]) <= set(fine)
        assert doc["cost"] <= doc["cost_uniform_in_fine_grid"] + 1e-12
        assert grids.parse_grid(f"file:{tmp_path / 'a' / f'grid_ddim_{k}.json'}", 1000).timesteps == tuple(doc["timesteps"])

    # 3. an uninterrupted run gives the same grids; a rerun reuses the teacher (nothing to run)
    script.main(_optimizer_args(argv, tmp_path / "b"))
    for k in (3, 5):
        again = json.load(open(tmp_path / "b" / f"grid_ddim_{k}.json"))
        assert again["timesteps"] == docs[k]["timesteps"] and again["cost"] == pytest.approx(docs[k]["cost"], rel=1e-6)
    capsys.readouterr()
    script.main(_optimizer_args(argv, tmp_path / "b", "--grid_steps", "4"))
    out = capsys.readouterr().out
    assert "trajectories to run" not in out and os.path.isfile(tmp_path / "b" / "grid_ddim_4.json")


def test_optimizer_refuses_bad_settings(tmp_path, tiny_checkpoint):
    import importlib.util

    spec = importlib.util.spec_from_file_location("optimize_grid", os.path.join(ROOT, "scripts", "optimize_grid.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _, _, argv = tiny_checkpoint
    with pytest.raises(ValueError, match="exceeds the 12 timesteps"):
        script.main(_optimizer_args(argv, tmp_path, "--grid_steps", "20"))
    with pytest.raises(ValueError, match="starts at t = 400"):
        script.main(_optimizer_args(argv, tmp_path, "--fine_grid", "t:400,200,100,0", "--grid_steps", "2"))
