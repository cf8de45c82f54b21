"""Draw ts_dpm.png: what the time shift sees and does, computed with a real model (default: the demo).

    python scripts/plot_ts_dpm.py --out ts_dpm.png --data /work/data/fmnist_train32.npz

Panel 1: per-sample variance of the state x_t entering each DDIM step, against the noise level
the sampler assumes (1 - alpha_bar_t), upstream's flipped table, and the true marginal variance
alpha_bar_t Var(x0) + 1 - alpha_bar_t (Var(x0) from --data when given).
Panel 2: the original timesteps tau the shift matched for each sample, against the nominal grid.
Panel 3: the same seeds sampled with DDIM and with TS-DDIM.
Model flags are the sampling scripts' (no flags: the bundled demo model).
"""

import sys
from types import SimpleNamespace

import numpy as np
import torch

from guided_diffusion.generate import SampleNoise, to_uint8_rgb
from guided_diffusion.io_util import run_cli, save_figure_atomic
from guided_diffusion.sample_run import build_model_and_diffusion, parse_sampling_flags
from guided_diffusion.sampling import Sampler, sample_loop_progressive
from guided_diffusion.time_shift import TimeShift, per_sample_variance


def trajectories(model, diffusion, x_T, ts):
    """Per step: original timestep, variance of the incoming state (B,), matched tau (B,) or None, final x."""
    rows, x = [], x_T
    for out in sample_loop_progressive(diffusion, model, x_T.shape, Sampler("ddim", time_shift=ts), noise=x_T):
        tau = out["shifted_timesteps"]
        rows.append((out["timestep"], per_sample_variance(x).numpy(), None if tau is None else tau.numpy()))
        x = out["sample"]
    return rows, x


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    own = {"--out": "ts_dpm.png", "--data": "", "--num": "256"}
    for key in list(own):
        if key in argv:
            i = argv.index(key)
            own[key] = argv[i + 1]
            del argv[i : i + 2]
    if "--timestep_respacing" not in argv:
        argv += ["--timestep_respacing", "ddim10", "--window", "40", "--cutoff", "300"]
    job, _ = parse_sampling_flags(argv)
    args = SimpleNamespace(**job.flags())
    torch.manual_seed(0)
    model, diffusion = build_model_and_diffusion(job, "cpu")
    n = int(own["--num"])
    shape = (args.image_channels, args.image_size, args.image_size)
    x_T = SampleNoise(args.seed).normal(torch.arange(n), 0, shape)
    ts = TimeShift(int(args.window), int(args.cutoff), args.ts_rule)
    with torch.no_grad():
        plain_rows, plain_x = trajectories(model, diffusion, x_T, None)
        ts_rows, ts_x = trajectories(model, diffusion, x_T, ts)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ab = diffusion.base_alphas_cumprod
    t_all = np.arange(len(ab))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=110, gridspec_kw={"width_ratios": [1.2, 1.2, 1]})
    ax = axes[0]
    ax.plot(t_all, 1 - ab, color="k", lw=1, label=r"$1-\bar\alpha_t$ (assumed noise level)")
    ax.plot(t_all, ab[::-1], color="gray", lw=1, ls=":", label=r"upstream table $\bar\alpha_{T-1-t}$")
    if own["--data"]:
        data = np.load(own["--data"])["arr_0"][:5000].astype(np.float64) / 127.5 - 1
        v0 = data.reshape(len(data), -1).var(axis=1, ddof=1).mean()
        ax.plot(t_all, ab * v0 + 1 - ab, color="tab:green", lw=1,
                label=r"true $\bar\alpha_t\,\mathrm{Var}(x_0)+1-\bar\alpha_t$")
    for rows, color, name in ((plain_rows, "tab:blue", "DDIM"), (ts_rows, "tab:red", "TS-DDIM")):
        t = np.array([r[0] for r in rows])
        v = np.stack([r[1] for r in rows])
        ax.plot(t, v.mean(1), "o-", color=color, ms=4, label=f"{name}: mean Var($x_t$) per sample")
        ax.fill_between(t, np.percentile(v, 10, 1), np.percentile(v, 90, 1), color=color, alpha=0.15)
    ax.set_xlabel("original timestep t")
    ax.set_ylabel("variance of the state entering the step")
    ax.set_title("Exposure bias: sampled states vs the schedule", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[1]
    rng = np.random.default_rng(0)
    for cur, _, tau in ts_rows:
        if tau is not None:
            ax.scatter(np.full(len(tau), cur) + rng.uniform(-12, 12, len(tau)), tau, s=3, color="tab:red", alpha=0.4)
            ax.vlines(cur, cur - ts.window // 2, cur + ts.window // 2, color="k", lw=6, alpha=0.12)
    grid = [r[0] for r in ts_rows]
    ax.plot(grid, grid, "k.--", lw=0.8, label="nominal timestep")
    ax.set_xlabel("nominal original timestep of the step")
    ax.set_ylabel(r"matched timestep $\tau_b$ (per sample)")
    ax.set_title(f"Shifted timesteps ({args.ts_rule} rule, window {ts.window}, cutoff {ts.cutoff})", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[2]
    k = 8
    strip = np.concatenate([np.concatenate(list(to_uint8_rgb(x[:k])), axis=1) for x in (plain_x, ts_x)], axis=0)
    ax.imshow(strip, interpolation="nearest")
    ax.set_yticks([args.image_size / 2, 1.5 * args.image_size], ["DDIM", "TS-DDIM"])
    ax.set_xticks([])
    ax.set_title(f"Same seeds, {args.timestep_respacing} ({len(grid)} steps)", fontsize=10)
    fig.tight_layout()
    save_figure_atomic(own["--out"], fig)
    print(f"wrote {own['--out']}")


if __name__ == "__main__":
    run_cli(main)
