"""The experiment layer in process: cells -> sampling jobs and NFE, bench plans on any grid, the report
writer (comparisons, provenance, plot), published numbers from the data file, a report from the cache alone."""

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from guided_diffusion.jobs import bench, report
from guided_diffusion.jobs.cells import Cell, ScoreCache, grid_for, grid_template, job_nfe
from guided_diffusion.jobs.sample import SamplingJob
from guided_diffusion.sampler.solvers import nfe
from guided_diffusion.settings import EvalConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = dict(image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="", channel_mult="1",
             learn_sigma=True, noise_schedule="cosine")


def _args(**kw):
    base = dict(steps="4,10", samplers="ddim,ts-ddim", grids="", respacing="ddim", preset="paper",
                ts_settings="4:20:100", extra_cells="")
    base.update(kw)
    return SimpleNamespace(**base)


def test_cell_is_a_change_to_the_sampling_job():
    job = SamplingJob.from_flags(dict(FLAGS, timestep_respacing="ddim10", use_ddim=True))
    cell = Cell(solver="f-pndm", grid="pndm10", window=20, cutoff=300, rule="adm-data", dcw_low=0.05, seed=3)
    j = cell.job(job, out_dir="x")
    assert j.sampler.solver_name() == "f-pndm" and j.diffusion.timestep_respacing == "pndm10"
    assert j.time_shift.do_time_shift and (j.time_shift.window, j.time_shift.cutoff, j.time_shift.ts_rule) == (
        20, 300, "adm-data")
    assert j.sampler.dcw_low == 0.05 and j.sampler.seed == 3 and j.run.out_dir == "x"
    assert job_nfe(j) == nfe("f-pndm", 9, ends_clean=True) == 9 + 3 * 3  # pndm10 has 9 steps
    # DDIM / DDPM keep upstream's spelling (--use_ddim), so a bench cell's outputs keep their names
    assert Cell(solver="ddpm").job(job).sampler.solver_name() == "ddpm"
    assert Cell(solver="ddim").job(job).pixel_settings() == job.pixel_settings()
    assert Cell(window=0, cutoff=500, rule="offset") == Cell() and Cell(window=5).rule == "adm"
    assert Cell(grid="10").plain() == Cell(grid="10") and Cell(grid="10", window=5).plain() == Cell(grid="10")
    with pytest.raises(ValueError, match="unknown solver"):
        Cell(solver="euler")


def test_grid_templates():
    assert grid_for("ddimN", 10) == "ddim10" and grid_for("karrasN:7", 5) == "karras5:7" and grid_for("N", 4) == "4"
    assert grid_for("file:g.json", 10) == "file:g.json" and grid_for("ddim20", 10) == "ddim20"
    assert grid_for("file:grids/demo_{N}.json", 5) == "file:grids/demo_5.json"  # one file per step count
    assert grid_template("ddim10", 10) == "ddimN" and grid_template("quad5", 5) == "quadN"
    assert grid_template("10", 10) == "N" and grid_template("ddim110", 10) == "ddim110"
    assert bench.split_grids("ddimN, trailingN,t:999,500,0,file:a.json") == [
        "ddimN", "trailingN", "t:999,500,0", "file:a.json"]


def test_plan_keys_nfe_and_grids():
    job = SamplingJob.from_flags(dict(FLAGS))
    cells = bench.plan(_args(samplers="ddim,f-pndm,ts-ddim-quad", extra_cells="ddim:4:eps_scale=1.01,"
                             "ddim:4:grid=pndm4"), job)
    keys = [c.key for c in cells]
    assert keys == ["ddim_4", "ddim_10", "f-pndm_4", "f-pndm_10", "ts-ddim-quad_4_w20_c100", "ts-ddim-quad_10_w40_c300",
                    "ddim_4_eps_scale1.01", "ddim_4_gpndm4"]
    by = {c.key: c for c in cells}
    assert by["f-pndm_4"].nfe == 13 and by["ddim_10"].nfe == 10 and by["ddim_4_gpndm4"].nfe == 3
    assert by["ts-ddim-quad_4_w20_c100"].cell.grid == "quad4" and by["ddim_4"].cell.grid == "ddim4"
    assert not by["ddim_4_eps_scale1.01"].main and by["ddim_4_eps_scale1.01"].cell.eps_scale == 1.01
    # several grids: one row per sampler and grid, keys say the grid
    cells = bench.plan(_args(samplers="ddim", grids="ddimN,N", steps="4"), job)
    assert [(c.key, c.cell.grid, c.row) for c in cells] == [("ddim_4_gddimN", "ddim4", ("ddim", "ddimN")),
                                                            ("ddim_4_gN", "4", ("ddim", "N"))]
    with pytest.raises(ValueError, match="grid 'bogus4'"):
        bench.plan(_args(samplers="ddim", grids="bogusN", steps="4"), job)


def _entries():
    job = SamplingJob.from_flags(dict(FLAGS))
    return bench.plan(_args(samplers="ddim,ts-ddim,f-pndm", steps="4,10", extra_cells="ddim:10:dcw_low=0.05"), job)


def test_report_marks_gaps_beyond_twice_the_combined_sd():
    entries = _entries()
    results = {
        "ddim_4": dict(fid=100.0, fid_sd=2.0, kid_mean=0.05, kid_se=0.001),
        "ts-ddim_4_w20_c100": dict(fid=90.0, fid_sd=2.0, kid_mean=0.04, kid_se=0.001),  # 10 > 2 * 2.83: better
        "ddim_10": dict(fid=50.0, fid_sd=3.0),
        "ts-ddim_10_w40_c300": dict(fid=45.0, fid_sd=3.0),  # 5 < 2 * 4.24: no mark
        "ddim_10_dcw_low0.05": dict(fid=60.0, fid_sd=1.0),  # 10 > 2 * 3.16: worse
        "f-pndm_4": dict(fid=80.0, fid_sd=1.0),
    }
    prov = dict(date="2026-01-01 00:00 UTC", commit="abc1234", command="python scripts/fid_table.py ...",
                machine="a 2-core AMD EPYC CPU")
    text = report.render_markdown(entries, results, num_samples=1000, reference="ref.npz", provenance_info=prov,
                                  published_set=report.published("cifar10_adm"))
    rows = {}
    for line in text.splitlines():  # the main table's rows (the search table repeats some labels below it)
        if line.startswith("| "):
            rows.setdefault(line.split("|")[1].strip(), line)
    assert "90.00 ± 2.00 / KID 40.00 ± 1.00 (better) (w20, c100)" in rows["TS-DDIM (adm rule)"]
    assert "45.00 ± 3.00 (w40, c300) [10.73]" in rows["TS-DDIM (adm rule)"]  # inside the noise; published beside
    assert rows["F-PNDM"] == "| F-PNDM | 80.00 ± 1.00 (NFE 13) | - (NFE 19) |"  # 10 steps not scored
    assert "| DDIM | 10 | 10 | - | - | dcw_low=0.05 | 60.00 ± 1.00 (worse) |" in text
    assert text.startswith("Generated 2026-01-01 00:00 UTC at commit abc1234 on a 2-core AMD EPYC CPU by:")
    assert "arXiv:2305.15583" in text


def test_plot_and_machine(tmp_path):
    entries = _entries()
    results = {"ddim_4": dict(fid=100.0, fid_sd=2.0), "ddim_10": dict(fid=50.0, fid_sd=1.0),
               "ts-ddim_4_w20_c100": dict(fid=90.0, fid_sd=2.0)}
    for by in ("solver", "grid"):
        report.plot_fid_vs_nfe(entries, results, str(tmp_path / f"{by}.png"), by=by)
        assert (tmp_path / f"{by}.png").stat().st_size > 1000
    assert re.fullmatch(r"a \d+-core .+ CPU( and an .+ GPU)?", report.machine_description())
    assert re.fullmatch(r"[0-9a-f]{4,}(\+changes)?|unknown", report.git_commit())


def test_published_numbers_have_sources():
    sets = report.published()
    assert {"cifar10_adm", "cifar10_ddpm_backbone"} <= set(sets)
    for entry in sets.values():
        assert entry["source"] and entry["protocol"] and entry["note"]
        assert all(isinstance(s, int) and 0 < v < 200 for row in entry["fid"].values() for s, v in row.items())
    assert sets["cifar10_ddpm_backbone"]["fid"]["ts-f-pndm"][10] == 3.88 and report.published("none") == {}


@pytest.mark.integration
def test_report_from_the_cache_alone(tmp_path):
    """--phase report renders the table from cached scores (here put there by hand): nothing is sampled."""
    (tmp_path / "m.pt").write_bytes(b"a checkpoint's bytes (only hashed here)")
    np.savez(tmp_path / "ref.npz", mu=np.zeros(4))
    argv = ["--model_path", str(tmp_path / "m.pt")] + [x for k, v in FLAGS.items() for x in (f"--{k}", str(v))]
    base_job = SamplingJob.from_flags(dict(FLAGS, model_path=str(tmp_path / "m.pt")))
    args = _args(samplers="ddim,ts-ddim", steps="4", table_dir=str(tmp_path / "t"), cache_dir=str(tmp_path / "c"),
                 ref_batch=str(tmp_path / "ref.npz"), **{k: getattr(EvalConfig(), k) for k in EvalConfig.KEY_FIELDS},
                 inception_path=None, eval_device=None)
    entries = bench.plan(args, base_job)
    cache = bench.open_cache(args, base_job)
    assert isinstance(cache, ScoreCache)
    for e, fid in zip(entries, (61.5, 42.25)):
        cache.put(bench.cell_job(base_job, e, args.table_dir), dict(fid=fid, fid_sd=0.5, kid_mean=None,
                                                                    num_samples=10000))
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "fid_table.py"), "--phase", "report", "--table_dir",
           args.table_dir, "--cache_dir", args.cache_dir, "--ref_batch", args.ref_batch, "--steps", "4",
           "--samplers", "ddim,ts-ddim", "--ts_settings", "4:20:100", *argv]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-2000:]
    table = (tmp_path / "t" / "table.md").read_text()
    assert "| DDIM | 61.50 ± 0.50 |" in table
    assert "| TS-DDIM (adm rule) | 42.25 ± 0.50 (better) (w20, c100) |" in table
    assert "fid_table.py --phase report" in table and not (tmp_path / "t" / "cells").exists()
    assert (tmp_path / "t" / "fid_vs_nfe.png").stat().st_size > 0


def test_evaluator_options_are_declared_once():
    """The evaluator's CLI takes its options (and their defaults) from settings.EvalConfig, as the bench and
    the tuner do; --device stays an alias of --eval_device."""
    from evaluations import evaluator, metrics

    args = evaluator.build_parser().parse_args(["a.npz", "b.npz", "--device", "cpu"])
    d = EvalConfig()
    assert {k: getattr(args, k) for k in EvalConfig.KEY_FIELDS} == d.key() and args.eval_device == "cpu"
    assert d.fid_method == "eigh" and metrics.KID_SUBSETS == d.kid_subsets == 100
    assert evaluator.FID_BOOTSTRAP_ROUNDS == d.fid_bootstrap
    with pytest.raises(ValueError, match="--fid_bootstrap"):
        EvalConfig(fid_bootstrap=1).validate()


def _earlier_table(folder, key, job, timesteps, num_samples, fid=None, seed_delta=0):
    """An earlier table folder holding one cell: its npz, the run metadata and (optionally) its score."""
    cell_dir = folder / "cells" / key
    cell_dir.mkdir(parents=True)
    np.savez(cell_dir / "s.npz", np.zeros((num_samples, 8, 8, 3), np.uint8))
    settings = dict(job.pixel_settings(), window=40)  # the shift's settings do not matter while it is off
    settings["seed"] += seed_delta
    (cell_dir / "s.json").write_text(json.dumps(dict(npz="s.npz", num_samples=num_samples, settings=settings,
                                                     timesteps=timesteps, checkpoint_sha256="abc")))
    if fid is not None:
        (folder / "results.json").write_text(json.dumps({key: dict(fid=fid, num_samples=num_samples)}))


def test_earlier_cells_are_adopted_only_when_their_settings_match(tmp_path):
    base = SamplingJob.from_flags(dict(FLAGS, num_samples=6, batch_size=2))
    entries = [e for e in bench.plan(_args(samplers="ddim", steps="4"), base)]
    job = bench.cell_job(base, entries[0], str(tmp_path / "new"))
    timesteps = [0, 250, 500, 750]
    _earlier_table(tmp_path / "same", "ddim_4", job, timesteps, 6, fid=12.5)
    _earlier_table(tmp_path / "seed", "ddim_4", job, timesteps, 6, seed_delta=1)
    _earlier_table(tmp_path / "grid", "ddim_4", job, [0, 300, 600, 900], 6)
    _earlier_table(tmp_path / "count", "ddim_4", job, timesteps, 5)
    table = str(tmp_path / "new")
    for wrong in ("seed", "grid", "count"):
        assert bench.import_earlier_cells(entries, base, table, None, [str(tmp_path / wrong)], log=lambda t: None) == 0
        assert bench.cell_npz(entries[0], table) is None
    assert bench.import_earlier_cells(entries, base, table, None, [str(tmp_path / "same")], log=lambda t: None) == 1
    assert os.path.samefile(bench.cell_npz(entries[0], table), tmp_path / "same" / "cells" / "ddim_4" / "s.npz")
    with pytest.raises(ValueError, match="--import_from"):
        bench.import_earlier_cells(entries, base, table, None, [str(tmp_path / "nothing")])



class _DictCache:
    """The two ScoreCache methods import_earlier_cells uses, in memory."""

    checkpoint_sha256 = "abc"
    eval_config = EvalConfig()

    def __init__(self):
        self.scores = {}

    def get(self, job):
        return self.scores.get(json.dumps(job.pixel_settings(), sort_keys=True))

    def put(self, job, result, **info):
        self.scores[json.dumps(job.pixel_settings(), sort_keys=True)] = result


def test_an_earlier_score_is_adopted_after_its_samples(tmp_path):
    """A cell whose npz was adopted before its earlier table had scored it gets the score on a later run."""
    base = SamplingJob.from_flags(dict(FLAGS, num_samples=6, batch_size=2))
    entries = bench.plan(_args(samplers="ddim", steps="4"), base)
    table, cache = str(tmp_path / "new"), _DictCache()
    job = bench.cell_job(base, entries[0], table)
    _earlier_table(tmp_path / "early", "ddim_4", job, [0, 250, 500, 750], 6)
    assert bench.import_earlier_cells(entries, base, table, cache, [str(tmp_path / "early")], log=lambda t: None) == 1
    assert cache.get(job) is None
    (tmp_path / "early" / "results.json").write_text(json.dumps({"ddim_4": dict(fid=3.5, num_samples=6)}))
    assert bench.import_earlier_cells(entries, base, table, cache, [str(tmp_path / "early")], log=lambda t: None) == 1
    assert cache.get(job)["fid"] == 3.5


def test_ts_settings_per_grid_and_sampler():
    s = bench.parse_ts_settings("5:40:300,10:10:300,10:4:300:grid=trailingN,"
                                "10:2:200:grid=file:g_{N}.json:sampler=ts-dpm++2m,5:20:300:sampler=ts-ipndm")
    assert bench.ts_setting(s, 10, "ddimN", "ts-ddim") == (10, 300)
    assert bench.ts_setting(s, 10, "trailingN", "ts-ddim") == (4, 300)
    assert bench.ts_setting(s, 10, "file:g_{N}.json", "ts-dpm++2m") == (2, 200)
    assert bench.ts_setting(s, 10, "file:g_{N}.json", "ts-ddim") == (10, 300)
    assert bench.ts_setting(s, 5, "trailingN", "ts-ipndm") == (20, 300) and bench.ts_setting(s, 20) is None
    for bad in ("10:4", "10:4:300:grid=", "10:4:300:window=3", "10:4:300:sampler=ts-euler"):
        with pytest.raises(ValueError):
            bench.parse_ts_settings(bad)
    job = SamplingJob.from_flags(dict(FLAGS, timestep_respacing="ddim10", use_ddim=True))
    cells = bench.plan(_args(steps="10", samplers="ts-ddim", grids="ddimN,trailingN",
                             ts_settings="10:10:300,10:4:300:grid=trailingN"), job)
    assert [(c.cell.grid, c.cell.window) for c in cells] == [("ddim10", 10), ("trailing10", 4)]
    assert 7 not in bench.PRESETS["paper"]  # a grid-only item leaves the other grid's cell without a setting
    with pytest.raises(ValueError, match=r"no window/cutoff for steps \[7\]"):
        bench.plan(_args(steps="7", samplers="ts-ddim", grids="ddimN,trailingN",
                         ts_settings="7:4:300:grid=trailingN"), job)
    assert len(bench.plan(_args(steps="7", samplers="ts-ddim", grids="trailingN",
                                ts_settings="7:4:300:grid=trailingN"), job)) == 1
