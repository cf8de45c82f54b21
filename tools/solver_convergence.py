"""Observed order of each deterministic solver on the exact probability-flow ODE of Gaussian data.

    python tools/solver_convergence.py [--steps 5,10,20,40,80] [--spacing lambda|sigma|time]
                                         [--lam_start -5] [--lam_end 5] [--s 0.5]

Data x0 ~ N(mu, s^2) per pixel, exact eps (no model error, no clipping). For a VP process the
marginal at alpha_bar a is N(sqrt(a) mu, a s^2 + 1 - a) and the PF-ODE map is the affine
transport between these Gaussians:
    x(a) = sqrt(a) mu + sqrt(a s^2 + 1 - a) (x(a0) - sqrt(a0) mu) / sqrt(a0 s^2 + 1 - a0).
Each solver integrates from lambda_start to lambda_end (lambda = log(sqrt(a) / sqrt(1 - a))) in N
steps; the error is the RMS of the final state against that map; the slope is
-d log(error) / d log(N) between consecutive N and by a least-squares fit over the last three.

Grid (what the N + 1 points are uniform in; also where F-PNDM puts its midpoints), time u from
1000 (noisiest) to u_end:
  lambda: the log-SNR, lambda(u) linear in u (the default);
  sigma:  the EDM noise level sigma = sqrt((1 - a) / a), linear in u (where iPNDM's and PNDM's
          fixed Adams-Bashforth weights are those of an equal-step method);
  time:   the continuous linear VP schedule alpha_bar = exp(-(0.1 t + 19.9 t^2 / 2)), t = u / 1000
          (a DDPM-like uniform-in-t grid; very uneven in sigma near the clean end).
Without arguments it prints two tables: lambda grid over lambda in [-5, 5] with s = 0.5 (N = 5..80),
and sigma grid over lambda in [-2, 2] with s = 1 (N = 10..160).

Why iPNDM / F-PNDM show order ~2 on the lambda grid: their multistep weights are the fixed
equal-step Adams-Bashforth ones applied to increments in sigma; on a grid whose sigma steps change
smoothly from step to step (here geometrically) that is consistent only to second order. On the
sigma grid they are true AB4 and show slopes of 3-4 at these N (F-PNDM's RK4 warm-up keeps order 4
in the middle of the run; iPNDM's Euler first step caps it at 2 asymptotically).
"""

import argparse
import math

import torch

from guided_diffusion.sampler.solvers import SOLVERS, get_solver, nfe, x0_from_eps

LAMBDA_START, LAMBDA_END = -5.0, 5.0  # alpha_bar 4.5e-5 .. 0.99995


def _sigmoid2(lam):
    return torch.sigmoid(2 * torch.as_tensor(lam, dtype=torch.float64))  # a = sigmoid(2 lambda)


def make_schedule(grid, lam_start=LAMBDA_START, lam_end=LAMBDA_END):
    """(alpha_at(u), u_start, u_end): alpha_bar as a function of the solver's time u."""
    if grid == "lambda":
        def alpha_at(u):
            u = torch.as_tensor(u, dtype=torch.float64)
            return _sigmoid2(lam_end + (lam_start - lam_end) * u / 1000.0)

        return alpha_at, 1000.0, 0.0
    if grid == "sigma":
        sig_start, sig_end = math.exp(-lam_start), math.exp(-lam_end)

        def alpha_at(u):
            sig = sig_end + (sig_start - sig_end) * torch.as_tensor(u, dtype=torch.float64) / 1000.0
            return 1.0 / (1.0 + sig * sig)

        return alpha_at, 1000.0, 0.0
    if grid == "time":
        def alpha_at(u):
            t = torch.as_tensor(u, dtype=torch.float64) / 1000.0
            return torch.exp(-(0.1 * t + 19.9 * t * t / 2))

        # u_end: solve 0.1 t + 9.95 t^2 = -log(a_end) for t
        a_end = float(_sigmoid2(lam_end))
        c = -math.log(a_end)
        t_end = (-0.1 + math.sqrt(0.01 + 4 * 9.95 * c)) / (2 * 9.95)
        return alpha_at, 1000.0, 1000.0 * t_end
    raise ValueError(f"grid must be 'lambda', 'sigma' or 'time', got {grid!r}")


def gaussian_problem(seed=0, shape=(16, 1, 4, 4), s=0.5, a_start=None):
    """(mu, s, x_start) with x_start drawn from the exact marginal at alpha_bar a_start."""
    g = torch.Generator().manual_seed(seed)
    mu = (0.8 * torch.rand(shape[1:], generator=g, dtype=torch.float64) - 0.4)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    x = math.sqrt(a_start) * mu + math.sqrt(a_start * s * s + 1 - a_start) * z
    return mu, s, x


def exact_eps(x, a, mu, s):
    """E[eps | x_a] for x0 ~ N(mu, s^2): sqrt(1 - a) (x - sqrt(a) mu) / (a s^2 + 1 - a)."""
    a = torch.as_tensor(a, dtype=torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.sqrt(1 - a) * (x - torch.sqrt(a) * mu) / (a * s * s + 1 - a)


def exact_solution(x_start, a_start, a_end, mu, s):
    """The PF-ODE map from alpha_bar a_start to a_end for Gaussian data (affine in x_start)."""
    scale = math.sqrt(a_end * s * s + 1 - a_end) / math.sqrt(a_start * s * s + 1 - a_start)
    return math.sqrt(a_end) * mu + scale * (x_start - math.sqrt(a_start) * mu)


def integrate(solver, steps, grid="lambda", seed=0, lam_start=LAMBDA_START, lam_end=LAMBDA_END, s=0.5):
    """Run ``solver`` over a uniform grid of ``steps`` steps; return (rms error, network calls)."""
    alpha_at, u_start, u_end = make_schedule(grid, lam_start, lam_end)
    a_start, a_end = float(alpha_at(u_start)), float(alpha_at(u_end))
    mu, s, x = gaussian_problem(seed=seed, s=s, a_start=a_start)
    exact = exact_solution(x, a_start, a_end, mu, s)
    us = torch.linspace(u_start, u_end, steps + 1, dtype=torch.float64)
    calls = [0]

    def eval_eps(x_, t_, a_):
        calls[0] += 1
        return exact_eps(x_, a_, mu, s)

    state = solver.init_state()
    batch = x.shape[0]
    for k in range(steps):
        t_cur, t_next = us[k].expand(batch), us[k + 1].expand(batch)
        a_cur, a_next = alpha_at(t_cur), alpha_at(t_next)
        eps = eval_eps(x, t_cur, a_cur)
        x0 = x0_from_eps(x, eps, a_cur)
        x, state = solver.step(
            state, x, eps, x0, a_cur, a_next, is_last=k == steps - 1, num_steps=steps,
            t_cur=t_cur, t_next=t_next, eval_eps=eval_eps, alpha_at=alpha_at,
        )
    assert calls[0] == nfe(solver, steps), (solver.name, calls[0], nfe(solver, steps))
    return float(torch.sqrt(((x - exact) ** 2).mean())), calls[0]


def slopes(steps, errors):
    """Local slopes -dlog(err)/dlog(N) and a least-squares slope over the last three points."""
    logs = [(math.log(n), math.log(e)) for n, e in zip(steps, errors)]
    local = [-(e2 - e1) / (n2 - n1) for (n1, e1), (n2, e2) in zip(logs, logs[1:])]
    tail = logs[-3:]
    mx = sum(p[0] for p in tail) / len(tail)
    my = sum(p[1] for p in tail) / len(tail)
    fit = -sum((p[0] - mx) * (p[1] - my) for p in tail) / sum((p[0] - mx) ** 2 for p in tail)
    return local, fit


def convergence_table(steps=(5, 10, 20, 40, 80), grid="lambda", solvers=SOLVERS, lam_start=LAMBDA_START,
                      lam_end=LAMBDA_END, s=0.5):
    """One row per solver: errors, NFE, local slopes and the fitted slope over the last three N."""
    rows = []
    for name in solvers:
        solver = get_solver(name)
        results = [integrate(solver, n, grid=grid, lam_start=lam_start, lam_end=lam_end, s=s) for n in steps]
        errors = [r[0] for r in results]
        local, fit = slopes(steps, errors)
        rows.append({"solver": name, "errors": errors, "nfe": [r[1] for r in results], "local": local,
                     "fit": fit})
    return rows


def print_table(steps, grid, lam_start, lam_end, s):
    rows = convergence_table(steps, grid=grid, lam_start=lam_start, lam_end=lam_end, s=s)
    print(f"grid uniform in {grid}, lambda {lam_start:g} -> {lam_end:g}, data s = {s:g}: RMS error of the "
          f"final state vs the exact PF-ODE map [NFE]")
    print("solver   " + "".join(f"{'N=' + str(n):>20}" for n in steps) + "   local slopes / fit(last 3)")
    for r in rows:
        cells = "".join(f"{e:>13.3e} [{c:>3}]" for e, c in zip(r["errors"], r["nfe"]))
        local = " ".join(f"{v:5.2f}" for v in r["local"])
        print(f"{r['solver']:<9}{cells}   {local} / {r['fit']:5.2f}")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default=None, help="default 5,10,20,40,80 (lambda), 10,...,160 (sigma)")
    parser.add_argument("--spacing", default=None, choices=["lambda", "sigma", "time"],
                        help="default: the lambda table and the sigma table")
    parser.add_argument("--lam_start", type=float, default=None, help="log-SNR where the integration starts")
    parser.add_argument("--lam_end", type=float, default=None, help="log-SNR where the integration ends")
    parser.add_argument("--s", type=float, default=None, help="data standard deviation")
    args = parser.parse_args()
    short, long_ = (5, 10, 20, 40, 80), (10, 20, 40, 80, 160)
    if args.spacing is None:
        configs = [("lambda", LAMBDA_START, LAMBDA_END, 0.5, short), ("sigma", -2.0, 2.0, 1.0, long_)]
    else:
        configs = [(args.spacing, LAMBDA_START, LAMBDA_END, 0.5, short)]
    for grid, lam_start, lam_end, s, steps in configs:
        steps = steps if args.steps is None else [int(v) for v in args.steps.split(",")]
        lam_start = lam_start if args.lam_start is None else args.lam_start
        lam_end = lam_end if args.lam_end is None else args.lam_end
        s = s if args.s is None else args.s
        print_table(steps, grid, lam_start, lam_end, s)


if __name__ == "__main__":
    main()
