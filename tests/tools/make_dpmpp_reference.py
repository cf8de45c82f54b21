"""Write tests/data/dpmpp2m_reference.pt: Hugging Face diffusers' DPM-Solver++(2M) trajectories.

Run once by hand (diffusers is NOT a dependency of the project or of CI):

    pip install diffusers           # any recent version; 0.42.1 made the committed file
    PYTHONPATH=. python tests/tools/make_dpmpp_reference.py

For each case, ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
lower_order_final=True)`` is built from the project's own beta array (``trained_betas``, so its
alpha_bar is ours up to its float32 arithmetic), given an explicit timestep list, and run on the
analytic Gaussian-data model of ``tests/reference_models.py`` evaluated at the timesteps diffusers
passes. The file keeps the inputs, the scheduler's own sigmas (so the test can feed the solver
the exact alpha_bar diffusers used: a = 1 / (1 + sigma^2)) and every intermediate sample.
``tests/test_solvers.py`` replays the cases with ``guided_diffusion.sampler.solvers.DPMSolverPP2M``.
"""

import os
import runpy

import numpy as np
import torch

from guided_diffusion.schedules import get_named_beta_schedule

# tests/ is not a package: its reference model is read from the file
AnalyticEpsModel = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "reference_models.py"))[
    "AnalyticEpsModel"]

OUT = os.path.join(os.path.dirname(__file__), "..", "data", "dpmpp2m_reference.pt")

# name, schedule, timesteps (descending), final_sigmas_type
CASES = [
    # < 15 steps, ending clean (sigma 0): first step and last step first order
    ("linear_ddim10_zero", "linear", list(range(900, -1, -100)), "zero"),
    # >= 15 steps, ending clean: the last step is still first order (sigma 0)
    ("cosine_20_zero", "cosine", list(range(950, -1, -50)), "zero"),
    # < 15 steps ending at alpha_bar[0]: lower_order_final makes the last step first order
    ("linear_quad8_sigmamin", "linear", [800, 612, 450, 312, 200, 112, 50, 12], "sigma_min"),
    # >= 15 steps ending at alpha_bar[0]: the last step is second order
    ("cosine_16_sigmamin", "cosine", [int(v) for v in np.linspace(960, 20, 16)], "sigma_min"),
]


def run_case(name, schedule, timesteps, final_sigmas_type, seed):
    from diffusers import DPMSolverMultistepScheduler

    betas = get_named_beta_schedule(schedule, 1000)
    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        trained_betas=betas,
        algorithm_type="dpmsolver++",
        solver_order=2,
        lower_order_final=True,
        final_sigmas_type=final_sigmas_type,
        prediction_type="epsilon",
        thresholding=False,
    )
    sched.set_timesteps(timesteps=timesteps)
    assert [int(t) for t in sched.timesteps] == timesteps

    g = torch.Generator().manual_seed(seed)
    shape = (3, 2, 4, 4)
    mu = 0.6 * torch.rand(shape[1:], generator=g) - 0.3
    s, delta = 0.5, 0.03
    x_T = torch.randn(shape, generator=g)
    model = AnalyticEpsModel(mu, s, delta, np.cumprod(1.0 - betas), learn_sigma=False)

    x = x_T.clone()
    samples = []
    for t in sched.timesteps:
        eps = model(x, torch.full((shape[0],), int(t), dtype=torch.long))
        x = sched.step(eps, t, x).prev_sample
        samples.append(x.clone())
    return {
        "name": name,
        "schedule": schedule,
        "betas": torch.from_numpy(betas),
        "timesteps": torch.tensor(timesteps, dtype=torch.long),
        "final_sigmas_type": final_sigmas_type,
        "sigmas": sched.sigmas.clone(),
        "mu": mu,
        "s": s,
        "delta": delta,
        "x_T": x_T,
        "samples": torch.stack(samples),
    }


def main():
    import diffusers

    cases = [run_case(*case, seed=i) for i, case in enumerate(CASES)]
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    torch.save({"diffusers_version": diffusers.__version__, "cases": cases}, OUT)
    print(f"wrote {os.path.normpath(OUT)} ({len(cases)} cases, diffusers {diffusers.__version__})")


if __name__ == "__main__":
    main()
