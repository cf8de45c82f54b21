"""Time grid ``quadN`` and the deterministic solvers of ``guided_diffusion/sampler/solvers.py``."""

import numpy as np
import pytest

from guided_diffusion.respace import space_timesteps


# ----------------------------------------------------------------------------- quadN grid
def test_quad_grid_is_the_ddim_repo_rule():
    # DDIM repo, skip_type "quad": int(x ** 2) for x in linspace(0, sqrt(0.8 T), N).
    assert sorted(space_timesteps(1000, "quad10")) == [0, 9, 39, 88, 158, 246, 355, 483, 632, 800]
    assert sorted(space_timesteps(1000, "quad5")) == [0, 50, 200, 450, 800]
    assert space_timesteps(1000, "quad1") == {0}
    for n in (2, 7, 20, 29):
        steps = sorted(space_timesteps(1000, f"quad{n}"))
        expected = [int(v) for v in np.linspace(0, np.sqrt(800.0), n) ** 2]
        assert steps == expected and len(steps) == n and steps[0] == 0 and steps[-1] == 800
    assert sorted(space_timesteps(50, "quad6")) == [0, 1, 6, 14, 25, 40]


@pytest.mark.parametrize("spec, match", [
    ("quad30", r"only 29 distinct steps out of 1000; use quad29 or smaller"),
    ("quad100", r"only 96 distinct .* use quad29"),
    ("quad5000", r"cannot give 5000 distinct .* use quad29"),
    ("quad0", ">= 1"),
    ("quadx", "quadN"),
])
def test_quad_grid_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(1000, spec)


def test_quad_error_names_a_working_n():
    with pytest.raises(ValueError, match="use quad(\\d+)") as info:
        space_timesteps(200, "quad40")
    n = int(info.value.args[0].split("use quad")[1].split()[0])
    assert len(space_timesteps(200, f"quad{n}")) == n


# ----------------------------------------------------------------------------- solvers
import importlib.util  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402

from guided_diffusion.schedules import get_named_beta_schedule  # noqa: E402
from guided_diffusion.script_util import create_gaussian_diffusion  # noqa: E402
from guided_diffusion.sampler.solvers import (  # noqa: E402
    DDIM,
    IPNDM,
    SOLVERS,
    DPMSolverPP2M,
    DPMSolverPP2MState,
    EpsHistory,
    floor_alpha_at,
    get_solver,
    log_snr,
    nfe,
    pndm_time_pairs,
    x0_from_eps,
)
from reference_models import AnalyticEpsModel  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
LINEAR_AB = np.cumprod(1.0 - get_named_beta_schedule("linear", 1000))


def _problem(batch=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mu = 0.6 * torch.rand((2, 4, 4), generator=g) - 0.3
    x = torch.randn((batch, 2, 4, 4), generator=g).to(dtype)
    model = AnalyticEpsModel(mu, 0.5, 0.02, LINEAR_AB, learn_sigma=False)
    return model, x


def _run(solver, model, x, pairs, table=LINEAR_AB, shifted=None):
    """A minimal loop over (t, t_next) original-timestep pairs; t_next = -1 means clean.

    ``shifted``: {step index: (B,) target times} replaces the nominal t_next of that step.
    Returns (list of states after each step, number of network calls).
    """
    table_t = torch.as_tensor(table, dtype=torch.float64)
    alpha_at = floor_alpha_at(table_t)
    calls = [0]

    def eval_eps(x_, t_, a_):
        calls[0] += 1
        return model(x_, t_)

    batch = x.shape[0]
    state, out = solver.init_state(), []
    for k, (i, j) in enumerate(pairs):
        t_cur = torch.full((batch,), float(i), dtype=torch.float64)
        t_next = torch.full((batch,), float(j), dtype=torch.float64)
        if shifted and k in shifted:
            t_next = torch.as_tensor(shifted[k], dtype=torch.float64)
        a_cur, a_next = alpha_at(t_cur), alpha_at(t_next)
        eps = eval_eps(x, t_cur, a_cur)
        x0 = x0_from_eps(x, eps, a_cur)
        x, state = solver.step(state, x, eps, x0, a_cur, a_next, is_last=k == len(pairs) - 1,
                               num_steps=len(pairs), t_cur=t_cur, t_next=t_next, eval_eps=eval_eps,
                               alpha_at=alpha_at)
        out.append(x)
    return out, calls[0]


def test_registry_and_errors():
    assert SOLVERS == ("ddim", "dpm++2m", "ipndm", "s-pndm", "f-pndm")
    for name in SOLVERS:
        assert get_solver(name).name == name
    with pytest.raises(ValueError, match="ddpm_step"):
        get_solver("ddpm")
    with pytest.raises(ValueError, match="solver must be one of"):
        get_solver("heun")
    model, x = _problem()
    eps = model(x, torch.full((3,), 500))
    x0 = x0_from_eps(x, eps, LINEAR_AB[500])
    with pytest.raises(ValueError, match="num_steps"):
        DPMSolverPP2M().step(DPMSolverPP2MState(), x, eps, x0, LINEAR_AB[500], LINEAR_AB[400], is_last=True)
    with pytest.raises(ValueError, match="eval_eps"):
        get_solver("f-pndm").step(EpsHistory(), x, eps, x0, LINEAR_AB[500], LINEAR_AB[400])


def test_one_registry_feeds_the_flags_the_loop_and_nfe():
    import dataclasses

    from guided_diffusion.sampler.loop import Sampler
    from guided_diffusion.sampler.solvers import REGISTRY, SOLVER_NAMES
    from guided_diffusion.settings import SamplerConfig

    assert SOLVER_NAMES == tuple(spec.name for spec in REGISTRY)
    solver_flag = {f.name: f for f in dataclasses.fields(SamplerConfig)}["solver"]
    assert solver_flag.metadata["choices"] == ("",) + SOLVER_NAMES
    for spec in REGISTRY:
        assert Sampler(kind=spec.name).kind == spec.name and spec.summary in solver_flag.metadata["help"]
    with pytest.raises(ValueError, match="sampler kind"):
        Sampler(kind="heun")
    assert [nfe(name, 10) for name in SOLVER_NAMES] == [10, 10, 10, 10, 11, 19]
    assert nfe("f-pndm", 2, ends_clean=True) == 2 + 3 and nfe("ddpm", 0) == 0


# ----------------------------------------------------------------------------- DDIM reference
@pytest.mark.parametrize("shift", [False, True])
def test_ddim_equals_gaussian_diffusion_ddim_step(shift):
    diffusion = create_gaussian_diffusion(noise_schedule="cosine", timestep_respacing="ddim10", learn_sigma=True)
    mu = 0.6 * torch.rand((3, 8, 8), generator=torch.Generator().manual_seed(1)) - 0.3
    model = AnalyticEpsModel(mu, 0.5, 0.05, diffusion.base_alphas_cumprod)
    x = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(2))
    solver, state = DDIM(), None
    ac = torch.from_numpy(diffusion.alphas_cumprod)
    ac_prev = torch.from_numpy(diffusion.alphas_cumprod_prev)
    for i in range(diffusion.num_timesteps - 1, -1, -1):
        t = torch.full((4,), i, dtype=torch.long)
        target = None
        if shift and 0 < i < diffusion.num_timesteps - 1:
            target = ac_prev[i] * torch.tensor([1.0, 0.9, 1.05, 0.8], dtype=torch.float64).clamp(max=1)
        out = diffusion.ddim_step(model, x, t, target_alphas_cumprod=target, clip_denoised=True)
        a_next = ac_prev[t] if target is None else target
        ours, state = solver.step(state, x, None, out["pred_xstart"], ac[t], a_next)
        assert torch.allclose(ours, out["sample"], rtol=0, atol=1e-6)
        assert torch.equal(ours, out["sample"])  # same float64 coefficients, same two passes
        x = out["sample"]


def test_every_solver_reduces_to_ddim_for_one_step():
    model, x = _problem()
    ddim, _ = _run(DDIM(), model, x, [(600, 300)])
    for name in ("dpm++2m", "ipndm"):  # first step: no history
        out, _ = _run(get_solver(name), model, x, [(600, 300)])
        assert torch.allclose(out[0], ddim[0], rtol=0, atol=1e-12), name
    # a single step to clean (the ADM loop's last step): every solver is DDIM, i.e. returns x0
    x0 = x0_from_eps(x, model(x, torch.full((3,), 600)), LINEAR_AB[600])
    for name in SOLVERS:
        out, calls = _run(get_solver(name), model, x, [(600, -1)])
        assert torch.allclose(out[0], x0, rtol=0, atol=1e-12), name
        assert calls == nfe(name, 1, ends_clean=True) == 1
    # order-1 iPNDM is DDIM along a whole trajectory
    pairs = pndm_time_pairs(10)
    ddim, _ = _run(DDIM(), model, x, pairs)
    ip1, _ = _run(IPNDM(max_order=1), model, x, pairs)
    assert torch.allclose(ip1[-1], ddim[-1], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- DPM-Solver++(2M)
def _dpmpp_reference():
    return torch.load(os.path.join(ROOT, "tests", "data", "dpmpp2m_reference.pt"), weights_only=True)


def _replay(case, solver):
    betas = case["betas"].numpy()
    model = AnalyticEpsModel(case["mu"], case["s"], case["delta"], np.cumprod(1.0 - betas), learn_sigma=False)
    sigmas = case["sigmas"].double()
    a = 1.0 / (1.0 + sigmas**2)  # the alpha_bar diffusers used (a = 1 at sigma = 0)
    n = len(case["timesteps"])
    x, state, out = case["x_T"].clone(), solver.init_state(), []
    for k, t in enumerate(case["timesteps"].tolist()):
        eps = model(x, torch.full((x.shape[0],), t))
        x0 = x0_from_eps(x, eps, a[k])
        x, state = solver.step(state, x, eps, x0, a[k], a[k + 1], is_last=k == n - 1, num_steps=n)
        out.append(x)
    return torch.stack(out)


def test_dpmpp2m_matches_diffusers_reference():
    ref = _dpmpp_reference()
    assert len(ref["cases"]) == 4
    for case in ref["cases"]:
        # diffusers' alpha_bar (float32) is the project's schedule at those timesteps
        sched = np.cumprod(1.0 - case["betas"].numpy())
        a = 1.0 / (1.0 + case["sigmas"].double().numpy() ** 2)
        assert np.allclose(a[:-1], sched[case["timesteps"].numpy()], rtol=2e-6, atol=0)
        assert np.allclose(case["betas"].numpy(), get_named_beta_schedule(case["schedule"], 1000))
        ours = _replay(case, DPMSolverPP2M())
        err = (ours - case["samples"]).abs().max().item()
        assert err < 5e-6, (case["name"], err)


def test_dpmpp2m_reference_discriminates_variants():
    cases = {c["name"]: c for c in _dpmpp_reference()["cases"]}
    # without lower_order_final the < 15-step run ending at alpha_bar[0] has a 2nd-order last step
    c = cases["linear_quad8_sigmamin"]
    assert (_replay(c, DPMSolverPP2M(lower_order_final=False))[-1] - c["samples"][-1]).abs().max() > 1e-4
    # with >= 15 steps diffusers keeps the 2nd-order last step: lower_order_final must not apply
    c = cases["cosine_16_sigmamin"]
    ours = _replay(c, DPMSolverPP2M())
    assert (ours[-1] - c["samples"][-1]).abs().max() < 5e-6
    # and DDIM (order 1 everywhere) is far from every case
    for c in cases.values():
        assert (_replay(c, DDIM())[-1] - c["samples"][-1]).abs().max() > 1e-3


def test_dpmpp2m_stores_nominal_lambda_and_handles_clean_targets():
    model, x = _problem()
    solver = DPMSolverPP2M()
    a_cur = torch.full((3,), LINEAR_AB[500], dtype=torch.float64)
    shifted = torch.tensor([LINEAR_AB[400], LINEAR_AB[380], LINEAR_AB[420]], dtype=torch.float64)
    eps = model(x, torch.full((3,), 500))
    x0 = x0_from_eps(x, eps, a_cur)
    x1, state = solver.step(solver.init_state(), x, eps, x0, a_cur, shifted)
    assert torch.equal(state.lambda_prev, log_snr(a_cur)) and state.x0_prev is x0
    # next step: one sample's target is clean (its output is its x0), the others are 2nd order
    a1 = torch.full((3,), LINEAR_AB[400], dtype=torch.float64)
    eps1 = model(x1, torch.full((3,), 400))
    x01 = x0_from_eps(x1, eps1, a1)
    target = torch.tensor([LINEAR_AB[300], 1.0, LINEAR_AB[300]], dtype=torch.float64)
    x2, _ = solver.step(state, x1, eps1, x01, a1, target, is_last=False, num_steps=10)
    assert torch.isfinite(x2).all()
    assert torch.allclose(x2[1], x01[1], rtol=0, atol=1e-12)
    first_order, _ = DDIM().step(None, x1, eps1, x01, a1, target)
    assert (x2[0] - first_order[0]).abs().max() > 1e-6  # the others did use the history


# ----------------------------------------------------------------------------- S-PNDM / F-PNDM by hand
def _hand_pndm(method, model, x, pairs, table, shifted=None):
    """The DDPM-backbone repo's S-PNDM / F-PNDM written out step by step (docs/solvers.md).

    alpha_bar(t) = table[floor(t)]; the update is upstream's ``transfer`` in its own algebraic form
    x + (a' - a) (x / (sqrt(a) (sqrt(a) + sqrt(a'))) - e / (sqrt(a) (sqrt((1 - a') a) + sqrt((1 - a) a')))).
    """
    table = torch.as_tensor(table, dtype=torch.float64)
    calls = [0]

    def net(x_, t_):
        calls[0] += 1
        return model(x_, t_)

    def ab(t_):
        return table[t_.long()].view(-1, 1, 1, 1)

    def move(x_, t_, tn_, e_):
        a, an = ab(t_), ab(tn_)
        return x_ + (an - a) * (x_ / (a.sqrt() * (a.sqrt() + an.sqrt()))
                                - e_ / (a.sqrt() * (((1 - an) * a).sqrt() + ((1 - a) * an).sqrt())))

    ets, outs = [], []
    batch = x.shape[0]
    for k, (i, j) in enumerate(pairs):
        t = torch.full((batch,), float(i), dtype=torch.float64)
        tn = torch.full((batch,), float(j), dtype=torch.float64)
        if shifted and k in shifted:
            tn = torch.as_tensor(shifted[k], dtype=torch.float64)
        if method == "s-pndm":
            if not ets:  # improved Euler
                e1 = net(x, t)
                ets.append(e1)
                e2 = net(move(x, t, tn, e1), tn)
                e = (e1 + e2) / 2
            else:
                ets.append(net(x, t))
                e = (3 * ets[-1] - ets[-2]) / 2
        else:
            if len(ets) < 3:  # classical Runge-Kutta, midpoint time (t + t') / 2
                tm = (t + tn) / 2
                e1 = net(x, t)
                ets.append(e1)
                e2 = net(move(x, t, tm, e1), tm)
                e3 = net(move(x, t, tm, e2), tm)
                e4 = net(move(x, t, tn, e3), tn)
                e = (e1 + 2 * e2 + 2 * e3 + e4) / 6
            else:
                ets.append(net(x, t))
                e = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
        x = move(x, t, tn, e)
        outs.append(x)
    return outs, calls[0]


@pytest.mark.parametrize("method, sample_speed, shifted", [
    ("s-pndm", 4, None),                                  # Heun + 2 AB2 steps
    ("s-pndm", 4, {1: [1.0, 17.0, 40.0]}),                # per-sample target on an AB2 step
    ("f-pndm", 3, None),                                  # 3 RK4 steps, non-integer midpoints
    ("f-pndm", 5, None),                                  # 3 RK4 steps + 1 AB4 step
    ("f-pndm", 5, {1: [201.0, 213.0, 190.0]}),            # shifted RK4 step: shifted midpoints
])
def test_pndm_matches_hand_computation(method, sample_speed, shifted):
    model, x = _problem(seed=3)
    pairs = pndm_time_pairs(sample_speed)
    assert len(pairs) == (sample_speed - 1 if 1000 % sample_speed == 0 else sample_speed)
    expected, hand_calls = _hand_pndm(method, model, x, pairs, LINEAR_AB, shifted)
    ours, calls = _run(get_solver(method), model, x, pairs, shifted=shifted)
    for k, (a, b) in enumerate(zip(ours, expected)):
        assert torch.allclose(a, b, rtol=0, atol=1e-10), (method, k, (a - b).abs().max().item())
    assert calls == hand_calls == nfe(method, len(pairs))
    # upstream's count for "S steps": S-PNDM S, F-PNDM (S - 1) + 9 (for S - 1 >= 3)
    assert calls == (sample_speed if method == "s-pndm" else 4 * min(len(pairs), 3) + max(len(pairs) - 3, 0))


def test_nfe_rules():
    for name in ("ddim", "ddpm", "dpm++2m", "ipndm"):
        assert nfe(name, 10) == 10
    assert nfe("s-pndm", 9) == 10 and nfe("f-pndm", 9) == 18  # upstream "10 steps" = 9 transitions
    assert len(pndm_time_pairs(10)) == 9 and pndm_time_pairs(10)[0] == (801, 701)
    assert pndm_time_pairs(3) == [(667, 334), (334, 1), (1, 0)]  # 3 does not divide 1000: S transitions
    assert nfe("f-pndm", 2) == 8 and nfe("f-pndm", 2, ends_clean=True) == 5
    assert nfe("f-pndm", 10, ends_clean=True) == 19 and nfe("s-pndm", 10, ends_clean=True) == 11
    assert nfe(get_solver("s-pndm"), 1, ends_clean=True) == 1 and nfe("s-pndm", 0) == 0
    # extra_evals agrees with the calls a run makes, step by step
    solver = get_solver("f-pndm")
    state = solver.init_state()
    assert [solver.extra_evals(EpsHistory(tuple(range(n)))) for n in range(5)] == [3, 3, 3, 0, 0]
    assert solver.extra_evals(state, ends_clean=True) == 0


# ----------------------------------------------------------------------------- time shift
@pytest.mark.parametrize("name", SOLVERS)
def test_shift_off_is_bit_identical_and_shift_is_per_sample(name):
    model, x = _problem(seed=4)
    solver = get_solver(name)
    pairs = [(800, 650), (650, 500), (500, 350), (350, 200), (200, 50), (50, -1)]
    # (B,) targets equal to the nominal ones: bit-identical to the plain solver
    nominal = {k: [float(j)] * 3 for k, (i, j) in enumerate(pairs)}
    plain, calls_plain = _run(solver, model, x, pairs)
    same, calls_same = _run(solver, model, x, pairs, shifted=nominal)
    assert all(torch.equal(a, b) for a, b in zip(plain, same)) and calls_plain == calls_same
    # per-sample targets: sample b of the batch run equals sample b run alone
    shifted = {1: [500.0, 530.0, 470.0], 3: [200.0, 215.0, 190.0]}
    batch, _ = _run(solver, model, x, pairs, shifted=shifted)
    assert not torch.equal(batch[-1], plain[-1])
    for b in range(3):
        alone, _ = _run(solver, model, x[b:b + 1], pairs, shifted={k: [v[b]] for k, v in shifted.items()})
        assert torch.allclose(alone[-1][0], batch[-1][b], rtol=0, atol=1e-12), (name, b)


# ----------------------------------------------------------------------------- convergence
def _convergence_module():
    spec = importlib.util.spec_from_file_location(
        "solver_convergence", os.path.join(ROOT, "tools", "solver_convergence.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exact_gaussian_pf_ode_solution():
    sc = _convergence_module()
    # the exact map is the PF-ODE flow: DDIM with many steps converges to it
    err, _ = sc.integrate(DDIM(), 4000, grid="lambda", lam_start=-3.0, lam_end=3.0)
    assert err < 1e-3
    mu, s, x = sc.gaussian_problem(a_start=0.3)
    assert torch.allclose(sc.exact_solution(x, 0.3, 0.3, mu, s), x, atol=1e-14)


def test_observed_orders_on_log_snr_grid():
    sc = _convergence_module()
    rows = {r["solver"]: r for r in sc.convergence_table(steps=(10, 20, 40, 80), grid="lambda")}
    assert 0.9 < rows["ddim"]["fit"] < 1.1
    for name in ("dpm++2m", "ipndm", "s-pndm", "f-pndm"):
        assert 1.8 < rows[name]["fit"] < 2.3, (name, rows[name]["fit"])
        assert rows[name]["errors"][-1] < rows["ddim"]["errors"][-1] / 20


def test_adams_bashforth_solvers_are_higher_order_on_a_sigma_grid():
    sc = _convergence_module()
    rows = {r["solver"]: r for r in sc.convergence_table(
        steps=(40, 80, 160), grid="sigma", lam_start=-2.0, lam_end=2.0, s=1.0)}
    assert 0.9 < rows["ddim"]["fit"] < 1.1
    for name in ("dpm++2m", "s-pndm"):
        assert 1.6 < rows[name]["fit"] < 2.3, (name, rows[name]["fit"])
    for name in ("ipndm", "f-pndm"):
        assert rows[name]["fit"] > 2.5, (name, rows[name]["fit"])
        assert rows[name]["errors"][-1] < rows["dpm++2m"]["errors"][-1] / 100


def test_solvers_module_depends_on_torch_only():
    import ast

    tree = ast.parse(open(os.path.join(ROOT, "guided_diffusion", "sampler", "solvers.py")).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    assert names <= {"torch", "dataclasses", "typing"}, names


def test_pndm_grid_is_the_ddpm_backbone_repo_grid():
    """pndmN keeps the DDPM-backbone repo's timesteps (its sample_speed N: N - 1 steps at T = 1000)."""
    from guided_diffusion.sampler.solvers import pndm_time_pairs

    for n in (5, 10, 20, 100):
        assert sorted(space_timesteps(1000, f"pndm{n}"), reverse=True) == [t for t, _ in pndm_time_pairs(n)]
    assert sorted(space_timesteps(1000, "pndm10")) == [1, 101, 201, 301, 401, 501, 601, 701, 801]
    for bad, match in (("pndm1", r"\[2, 1000\]"), ("pndmx", "pndmN"), ("pndm2000", r"\[2, 1000\]")):
        with pytest.raises(ValueError, match=match):
            space_timesteps(1000, bad)
