"""Property-based tests (hypothesis): time shift, noise schedules, respacing strings, the sampling CLI.

Each property states what must hold for *every* input of a family (random schedules, states,
flag strings), not for a few hand-picked cases: a finite target in (0, 1] picked inside its
window; a valid set of timesteps or a one-line ValueError; a written npz or exit status 2 with
one line on stderr, never a traceback.
"""

import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from guided_diffusion.respace import space_timesteps
from guided_diffusion.schedules import get_named_beta_schedule
from guided_diffusion.script_util import create_gaussian_diffusion, create_model_and_diffusion
from guided_diffusion.script_util import model_and_diffusion_defaults
from guided_diffusion.sampler.time_shift import TS_RULES, TimeShift, is_eligible, per_sample_variance, shift_target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "image_sample_1gpu.py")

# No example database in the repository; failures are printed with their input by hypothesis.
PROPS = settings(max_examples=200, deadline=None, database=None)


def assert_one_line_value_error(exc):
    text = str(exc)
    assert isinstance(exc, ValueError), repr(exc)
    assert text.strip() and "\n" not in text, repr(text)


# ---------------------------------------------------------------- noise schedules


@PROPS
@given(name=st.sampled_from(["linear", "cosine"]), T=st.one_of(st.integers(-3, 40), st.integers(41, 1000)))
@example(name="linear", T=20)
@example(name="linear", T=21)
def test_named_schedule_is_valid_or_value_error(name, T):
    """Betas in (0, 1) and alpha_bar in (0, 1], strictly decreasing, or a one-line ValueError."""
    try:
        betas = get_named_beta_schedule(name, T)
    except ValueError as exc:
        assert_one_line_value_error(exc)
        assert T < 1 or (name == "linear" and 20 / T >= 1), (name, T)
        return
    assert betas.shape == (T,) and betas.dtype == np.float64
    assert ((betas > 0) & (betas < 1)).all(), (name, T, betas.max())
    ab = np.cumprod(1 - betas)
    assert ((ab > 0) & (ab <= 1)).all() and (np.diff(ab) < 0).all()


# ---------------------------------------------------------------- time shift


def states(batch, scale, kind, seed):
    """(B, 3, 4, 4) float32 states: gaussian at a scale, constants, or with NaN/inf samples."""
    g = np.random.default_rng(seed)
    with np.errstate(over="ignore"):  # 3e38 * N(0, 1) overflows float32 to +-inf on purpose
        x = (g.standard_normal((batch, 3, 4, 4)) * scale).astype(np.float32)
    if kind == "constant":
        x[:] = np.float32(scale)
    elif kind in ("nan", "inf", "-inf"):
        bad = g.integers(0, batch)
        x[bad, g.integers(0, 3), g.integers(0, 4), g.integers(0, 4)] = float(kind)
    elif kind == "all_nan":
        x[:] = np.nan
    return torch.from_numpy(x)


@PROPS
@given(
    name=st.sampled_from(["linear", "cosine"]),
    T=st.integers(10, 1000),
    steps=st.data(),
    rule=st.sampled_from(TS_RULES),
    batch=st.integers(1, 4),
    scale=st.sampled_from([0.0, 1e-30, 1e-12, 1e-3, 0.5, 1.0, 3.0, 1e3, 1e18, 1e30, 3e38]),
    kind=st.sampled_from(["gaussian", "gaussian", "gaussian", "constant", "nan", "inf", "-inf", "all_nan"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_time_shift_target_in_window_and_unit_interval(name, T, steps, rule, batch, scale, kind, seed):
    try:
        base = get_named_beta_schedule(name, T)
    except ValueError:  # linear T <= 20: its betas reach 1 (see the schedule property)
        assume(False)
    S = steps.draw(st.integers(1, T), label="S")
    window = steps.draw(st.integers(0, T), label="window")
    cutoff = steps.draw(st.integers(0, T), label="cutoff")
    diffusion = create_gaussian_diffusion(steps=T, noise_schedule=name, timestep_respacing=str(S))
    assert len(base) == len(diffusion.base_alphas_cumprod) == T
    alphas_cumprod = torch.from_numpy(diffusion.base_alphas_cumprod)
    ts = TimeShift(window, cutoff, rule)
    tmap = list(diffusion.timestep_map)
    x = states(batch, scale, kind, seed)
    # a few steps of the loop (all of them when S is small), in the loop's order
    picks = sorted(set(steps.draw(st.lists(st.integers(0, S - 1), min_size=1, max_size=6), label="steps")),
                   reverse=True)
    for i in picks:
        cur, nxt = tmap[i], (tmap[i - 1] if i > 0 else -1)
        if not is_eligible(ts, cur, nxt, first_step=i == S - 1):
            continue
        x0_hat = x.clamp(-1, 1) if rule == "adm-data" else None
        res = shift_target(x, alphas_cumprod, ts=ts, cur=cur, nxt=nxt, num_steps=S, x0_hat=x0_hat)
        target, tau = res.target_alphas_cumprod, res.timesteps
        assert target.shape == (batch,) and tau.shape == (batch,) and tau.dtype == torch.int64
        assert not torch.isnan(target).any() and torch.isfinite(target).all(), target
        assert ((target > 0) & (target <= 1)).all(), (target, tau)
        centre = nxt if rule == "pndm" else cur
        lo, hi = max(centre - window // 2, 0), min(centre + window // 2, T - 1)
        assert ((tau >= lo) & (tau <= hi)).all(), (tau, lo, hi)
        # a diverged sample (NaN/inf variance, e.g. a NaN value or a float32 overflow) takes the lowest candidate
        if rule == "offset":  # every eligible sample takes the noisy edge
            assert (tau == hi).all(), (tau, hi)
            continue
        bad = ~torch.isfinite(per_sample_variance(x))
        if rule == "adm-data":
            bad |= ~torch.isfinite(per_sample_variance(x0_hat))
        assert (tau[bad] == lo).all(), (tau, lo)


# ---------------------------------------------------------------- respacing strings

respacing_strings = st.one_of(
    st.integers(-5, 1200).map(str),
    st.lists(st.integers(-2, 500), min_size=1, max_size=6).map(lambda c: ",".join(map(str, c))),
    st.integers(-3, 1200).map(lambda n: f"ddim{n}"),
    st.text(alphabet="0123456789,ddim -x.+_\n\t", max_size=12),
    st.text(max_size=8),
    st.text(max_size=6).map(lambda junk: "ddim" + junk),
    st.integers(-3, 1200).map(lambda n: f"quad{n}"),
    st.integers(-3, 1200).map(lambda n: f"pndm{n}"),
    st.text(max_size=4).map(lambda junk: "pndm" + junk),
)
# small T, and counts at the edges of what T allows (T - 1, T, T + 1 steps, in one or two sections)
small_T = st.one_of(st.integers(1, 12), st.integers(1, 1000))


@st.composite
def respacing_for(draw, T):
    near = st.integers(max(T - 1, 0), T + 1)
    return draw(st.one_of(
        respacing_strings,
        near.map(str),
        near.map(lambda n: f"ddim{n}"),
        st.tuples(st.integers(0, T // 2 + 1), st.integers(0, (T + 1) // 2 + 1)).map(lambda c: f"{c[0]},{c[1]}"),
    ))


def requested_count(text):
    """The number of steps a well-formed string asks for, or None."""
    t = text.strip()
    if re.fullmatch(r"ddim\d+", t):
        return int(t[4:])
    if re.fullmatch(r"\d+(,\d+)*", t):
        return sum(int(c) for c in t.split(","))
    return None


def assert_valid_timesteps(steps, T, text):
    assert steps, text
    assert all(isinstance(s, (int, np.integer)) and 0 <= s < T for s in steps), (text, steps)
    desc = sorted(steps, reverse=True)
    assert all(a > b for a, b in zip(desc, desc[1:])), (text, desc)
    want = requested_count(text)
    if want is not None:
        assert len(steps) == want, (text, T, len(steps))


@PROPS
@given(data=st.data(), T=small_T)
def test_space_timesteps_parses_or_value_error(data, T):
    text = data.draw(respacing_for(T), label="text")
    try:
        steps = space_timesteps(T, text)
    except ValueError as exc:
        assert_one_line_value_error(exc)
        return
    assert isinstance(steps, set)
    assert_valid_timesteps(steps, T, text)


@settings(max_examples=100, deadline=None, database=None)
@given(data=st.data(), T=st.one_of(st.integers(1, 12), st.integers(1, 300)))
def test_create_gaussian_diffusion_respacing_parses_or_value_error(data, T):
    text = data.draw(respacing_for(T), label="text")
    try:
        diffusion = create_gaussian_diffusion(steps=T, noise_schedule="cosine", timestep_respacing=text)
    except ValueError as exc:
        assert_one_line_value_error(exc)
        return
    tmap = [int(t) for t in diffusion.timestep_map]
    assert tmap == sorted(tmap) and diffusion.num_timesteps == len(tmap)
    if text:  # '' means every step
        assert set(tmap) == space_timesteps(T, text)
        assert_valid_timesteps(set(tmap), T, text)
    else:
        assert tmap == list(range(T))
    assert np.isfinite(diffusion.betas).all() and ((diffusion.betas > 0) & (diffusion.betas < 1)).all()


# ---------------------------------------------------------------- the sampling command

TINY_MODEL = dict(image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="", channel_mult="1")
TINY_FLAGS = [f"--{k}={v}" for k, v in TINY_MODEL.items()] + ["--progress", "False"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model, _ = create_model_and_diffusion(**dict(model_and_diffusion_defaults(), **TINY_MODEL))
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def optional(strategy):
    return st.one_of(st.none(), strategy)


BOOLS = st.sampled_from(["True", "False", "true", "0", "1", "yes", "maybe", ""])
INT_OR_JUNK = st.one_of(st.integers(-5, 1200).map(str), st.sampled_from(["abc", "1.5", "", "1e3", "nan", " 7"]))
RESPACING_FLAG = st.one_of(
    st.integers(1, 5).map(str),
    st.integers(1, 5).map(lambda n: f"ddim{n}"),
    st.sampled_from(["1,1", "2,3", "0", "-1", "ddim", "ddimx", "1,,2", "abc", " ", "5000", "ddim0", "3.0", "ddim-2"]),
)
ANY_FLAGS = st.fixed_dictionaries(
    {"timestep_respacing": RESPACING_FLAG},  # always given: never all 1000 steps
    optional={
        "window": INT_OR_JUNK,
        "cutoff": INT_OR_JUNK,
        "ts_rule": st.sampled_from(["adm", "pndm", "ADM", "foo", ""]),
        "use_ddim": BOOLS,
        "do_time_shift": BOOLS,
        "eta": st.sampled_from(["0", "0.5", "1", "-0.1", "nan", "inf", "abc", "1e-3"]),
        "num_samples": st.one_of(st.integers(-2, 4).map(str), st.sampled_from(["x", "1.5"])),
        "batch_size": st.one_of(st.integers(-1, 5).map(str), st.just("x")),
    },
)
# valid values only, so that about half the runs sample (and their npz is checked)
VALID_FLAGS = st.fixed_dictionaries(
    {
        "timestep_respacing": st.one_of(st.integers(1, 5).map(str), st.integers(2, 5).map(lambda n: f"ddim{n}")),
        "use_ddim": st.sampled_from(["True", "False"]),
    },
    optional={
        "window": st.integers(0, 1200).map(str),
        "cutoff": st.integers(0, 1200).map(str),
        "ts_rule": st.sampled_from(["adm", "pndm"]),
        "do_time_shift": st.sampled_from(["True", "False", "1", "no"]),
        "num_samples": st.integers(1, 4).map(str),
        "batch_size": st.integers(1, 5).map(str),
    },
).flatmap(lambda f: st.just(f) if f["use_ddim"] == "False" else
          st.sampled_from(["0", "0.5", "1"]).map(lambda eta: {**f, "eta": eta}))
cli_flags = st.one_of(VALID_FLAGS, ANY_FLAGS)


@pytest.mark.integration
@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(flags=cli_flags)
# every kind of bad value at least once (library-side errors, not only argparse's)
@example(flags={"timestep_respacing": "ddimx"})
@example(flags={"timestep_respacing": "1,,2", "use_ddim": "True", "eta": "inf"})
@example(flags={"timestep_respacing": "5000", "window": "-3"})
@example(flags={"timestep_respacing": "3", "num_samples": "0", "batch_size": "-1"})
@example(flags={"timestep_respacing": "ddim0", "use_ddim": "maybe", "ts_rule": "foo"})
@example(flags={"timestep_respacing": "2", "use_ddim": "True", "eta": "0.5", "do_time_shift": "True",
                "window": "1200", "cutoff": "0", "ts_rule": "pndm", "num_samples": "3", "batch_size": "2"})
def test_sampling_cli_runs_or_exits_2_with_one_line(tiny_checkpoint, flags):
    flags = dict(flags)
    flags.setdefault("num_samples", "2")
    argv = [f"--{k}={v}" for k, v in flags.items()]
    with tempfile.TemporaryDirectory() as out_dir:
        res = subprocess.run(
            [sys.executable, SCRIPT, "--model_path", tiny_checkpoint, *TINY_FLAGS, "--out_dir", out_dir, *argv],
            capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
        event(f"exit status {res.returncode}")
        assert "Traceback" not in res.stderr, res.stderr
        assert res.returncode in (0, 2), (res.returncode, res.stderr)
        written = [f for f in os.listdir(out_dir) if f.endswith(".npz")]
        if res.returncode == 2:
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].strip(), res.stderr
            assert not written
            return
        assert len(written) == 1, os.listdir(out_dir)
        with np.load(os.path.join(out_dir, written[0])) as data:
            images = data["arr_0"]
        assert images.shape == (int(flags["num_samples"]), 8, 8, 3) and images.dtype == np.uint8


@pytest.mark.integration
@pytest.mark.parametrize("eta", ["nan", "inf", "-1"])
def test_sampling_cli_rejects_non_finite_eta(tiny_checkpoint, eta):
    with tempfile.TemporaryDirectory() as out_dir:
        res = subprocess.run(
            [sys.executable, SCRIPT, "--model_path", tiny_checkpoint, *TINY_FLAGS, "--out_dir", out_dir,
             "--timestep_respacing", "2", "--num_samples", "1", "--use_ddim", "True", "--eta", eta],
            capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 2 and "eta" in res.stderr, (res.returncode, res.stderr)

