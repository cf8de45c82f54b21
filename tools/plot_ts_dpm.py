"""Draw ts_dpm.png: what the time shift measures, what it chooses and what moves, with a real model.

    python tools/plot_ts_dpm.py --out ts_dpm.png --data data/fmnist_train32.npz --num_samples 128

Panel 1 (measured): the per-sample variance of the state x_t entering each DDIM step (mean and 10-90%
band over the samples), against the noise level the sampler assumes (1 - alpha_bar_t), the table the
paper's rule compares with (upstream's flipped alpha_bar), and, with --data, the true marginal
variance alpha_bar_t Var(x0) + 1 - alpha_bar_t.
Panel 2 (chosen): one eligible step (--zoom_step, default the first): inside the window the rule's
expected variance for each candidate tau, a few samples' measured variance (horizontal lines) and the
tau each one is given (the closest match, dots); the edges of the window are marked.
Panel 3 (what moves): at every eligible step, where the picks land relative to the nominal timestep
(tau - t, as a share of the samples), with the window's edges.
Panel 4: the same seeds sampled with DDIM and with TS-DDIM.
Every sampling flag is accepted (no model flags: the bundled demo model); defaults here: ddim10,
window 40, cutoff 300, 128 samples. Only the figure is written.
"""

import numpy as np
import torch

from guided_diffusion.sampler.generate import SampleNoise, to_uint8_rgb
from guided_diffusion.io_util import save_figure_atomic
from guided_diffusion.cli import run_cli
from guided_diffusion.jobs.sample import build_model_and_diffusion, parse_sampling_flags, sampling_parser
from guided_diffusion.sampler.loop import Sampler, sample_loop_progressive
from guided_diffusion.settings import nonneg_int
from guided_diffusion.sampler.time_shift import TimeShift, per_sample_variance, shift_window


def create_parser():
    parser = sampling_parser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1])
    parser.add_argument("--out", default="ts_dpm.png", help="PNG to write (default: ts_dpm.png)")
    parser.add_argument("--data", default="",
                        help="npz of training images (arr_0 uint8 NHWC) for the true-variance curve (default: none)")
    parser.add_argument("--zoom_step", type=nonneg_int, default=0,
                        help="which eligible step panel 2 shows: 0 = the first, 1 = the second, ... (default: 0)")
    parser.set_defaults(timestep_respacing="ddim10", window=40, cutoff=300, num_samples=128)
    return parser


def trajectories(model, diffusion, x_T, ts):
    """Per step: (original timestep, Var of the incoming state (B,), matched tau (B,) or None); final x."""
    rows, x = [], x_T
    for out in sample_loop_progressive(diffusion, model, x_T.shape, Sampler("ddim", time_shift=ts), noise=x_T):
        tau = out["shifted_timesteps"]
        rows.append((out["timestep"], per_sample_variance(x).numpy(), None if tau is None else tau.numpy()))
        x = out["sample"]
    return rows, x


def main(argv=None):
    job, args = parse_sampling_flags(argv, parser=create_parser())
    if job.run.num_samples < 1:
        raise ValueError("--num_samples must be >= 1")
    if job.time_shift.ts_rule not in ("adm", "offset"):
        raise ValueError(f"--ts_rule {job.time_shift.ts_rule}: the figure draws the adm / offset rules' table; "
                         "use --ts_rule adm")
    torch.manual_seed(0)
    model, diffusion = build_model_and_diffusion(job, "cpu")
    flags = job.flags()
    n, size, channels = job.run.num_samples, flags["image_size"], flags["image_channels"]
    x_T = SampleNoise(job.sampler.seed).normal(torch.arange(n), 0, (channels, size, size))
    ts = TimeShift(job.time_shift.window, job.time_shift.cutoff, job.time_shift.ts_rule)
    with torch.no_grad():
        plain_rows, plain_x = trajectories(model, diffusion, x_T, None)
        ts_rows, ts_x = trajectories(model, diffusion, x_T, ts)
    shifted = [(cur, v, tau) for cur, v, tau in ts_rows if tau is not None]
    if not shifted:
        raise ValueError("no step is shifted with these --window / --cutoff / --timestep_respacing: nothing to draw")
    if args.zoom_step >= len(shifted):
        raise ValueError(f"--zoom_step {args.zoom_step}: only {len(shifted)} steps are shifted (0..{len(shifted) - 1})")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ab = diffusion.base_alphas_cumprod
    T = len(ab)
    t_all = np.arange(T)
    table = ab[::-1]  # the adm rule's expected variance of an x at original timestep tau
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4), dpi=100, gridspec_kw={"width_ratios": [1.15, 1, 1, 0.95]})

    ax = axes[0]
    ax.plot(t_all, 1 - ab, color="k", lw=1, label=r"$1-\bar\alpha_t$: what the sampler assumes")
    ax.plot(t_all, table, color="gray", lw=1, ls=":", label=r"rule's table $\bar\alpha_{T-1-t}$ (upstream)")
    if args.data:
        with np.load(args.data) as z:
            data = z["arr_0"][:5000].astype(np.float64) / 127.5 - 1
        v0 = data.reshape(len(data), -1).var(axis=1, ddof=1).mean()
        ax.plot(t_all, ab * v0 + 1 - ab, color="tab:green", lw=1,
                label=r"true $\bar\alpha_t\,\mathrm{Var}(x_0)+1-\bar\alpha_t$")
    for rows, color, name in ((plain_rows, "tab:blue", "DDIM"), (ts_rows, "tab:red", "TS-DDIM")):
        t = np.array([r[0] for r in rows])
        v = np.stack([r[1] for r in rows])
        ax.plot(t, v.mean(1), "o-", color=color, ms=4, label=f"{name}: Var($x_t$) of each sample (mean, 10-90%)")
        ax.fill_between(t, np.percentile(v, 10, 1), np.percentile(v, 90, 1), color=color, alpha=0.15)
    ax.axvspan(0, ts.cutoff, color="k", alpha=0.05)
    ax.text(ts.cutoff / 2, 0.96, "below cutoff:\nno shift", ha="center", va="top", fontsize=7)
    ax.set_xlabel("original timestep t")
    ax.set_ylabel("variance of the state entering the step")
    ax.set_title("1. Measured: each sample's variance vs the schedule", fontsize=10)
    ax.legend(fontsize=6.5, loc="lower right")

    ax = axes[1]
    cur, v, tau = shifted[args.zoom_step]
    lo, hi = shift_window(ts, cur, -1, T)  # adm / offset windows are centred on t (nxt is not read)
    cand = np.arange(lo, hi + 1)
    ax.plot(cand, table[cand], color="gray", lw=2, label="expected variance of candidate $\\tau$")
    order = np.argsort(v)
    show = order[np.linspace(0, len(v) - 1, min(5, len(v))).astype(int)]
    colors = plt.cm.viridis(np.linspace(0.1, 0.9, len(show)))
    for b, c in zip(show, colors):
        ax.axhline(v[b], color=c, lw=0.8, ls="--")
        ax.plot([tau[b]], [table[tau[b]]], "o", color=c, ms=7)
    ax.axvline(cur, color="k", lw=1, label=f"nominal t = {cur}")
    ax.axvspan(lo, hi, color="tab:red", alpha=0.06, label=f"window [{lo}, {hi}]")
    ax.set_xlim(lo - 0.3 * (hi - lo + 1), hi + 0.3 * (hi - lo + 1))
    ax.set_xlabel(r"candidate original timestep $\tau$")
    ax.set_ylabel("variance")
    ax.set_title(f"2. Chosen: at t = {cur}, each sample takes the closest $\\tau$", fontsize=10)
    ax.plot([], [], "k--", lw=0.8, label="a sample's measured variance")
    ax.plot([], [], "ko", label=r"its $\tau$ (closest match)")
    ax.legend(fontsize=6.5, loc="upper left")

    ax = axes[2]
    half = ts.window // 2
    for k, (cur, _, tau) in enumerate(shifted):
        rel = tau - cur
        vals, counts = np.unique(rel, return_counts=True)
        ax.scatter(vals, np.full(len(vals), k), s=8 + 300 * counts / len(tau), color="tab:red", alpha=0.6)
        w_lo, w_hi = shift_window(ts, cur, -1, T)
        edge = float(np.mean((tau == w_lo) | (tau == w_hi)))
        ax.text(half * 1.08, k, f"{edge:.0%} on an edge", va="center", fontsize=7)
    ax.axvline(0, color="k", lw=1)
    ax.axvline(-half, color="k", lw=0.8, ls=":")
    ax.axvline(half, color="k", lw=0.8, ls=":")
    ax.set_yticks(range(len(shifted)), [f"t = {c}" for c, _, _ in shifted])
    ax.set_xlim(-half * 1.25, half * 1.9)
    ax.invert_yaxis()
    ax.set_xlabel(r"$\tau - t$ (> 0: treated as noisier than nominal); dot size = share of samples")
    ax.set_title(f"3. What moves: the step's target ({job.time_shift.ts_rule}, w{ts.window}, c{ts.cutoff})",
                 fontsize=10)

    ax = axes[3]
    k = min(6, n)
    strip = np.concatenate([np.concatenate(list(to_uint8_rgb(x[:k])), axis=1) for x in (plain_x, ts_x)], axis=0)
    ax.imshow(strip, interpolation="nearest")
    ax.set_yticks([size / 2, 1.5 * size], ["DDIM", "TS-DDIM"])
    ax.set_xticks([])
    ax.set_title(f"4. Same seeds, {flags['timestep_respacing']} ({len(ts_rows)} steps)", fontsize=10)
    fig.tight_layout()
    save_figure_atomic(args.out, fig)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    run_cli(main)
