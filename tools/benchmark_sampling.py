"""Time the sampling loops: network alone, DDIM, TS-DDIM (each rule), DDPM, TS-DDPM, seed loop, fast path.

CPU, the loop alone (a network that costs nothing), the target setting of docs/performance.md:

    python tools/benchmark_sampling.py --free_model True --batch_size 512 --steps 50

GPU, the seed's CIFAR-10 model (57M parameters, random weights), plain fp32 vs the fast path:

    python tools/benchmark_sampling.py --batch_size 256 --steps 50 --autocast bf16 --channels_last True

The per-sample noise generator alone (SampleNoise vs torch.randn of the same size; the target is
for at most 1.3x on CPU at batch 512, (3, 32, 32)):

    OMP_NUM_THREADS=1 python tools/benchmark_sampling.py --noise_only True --batch_size 512

Prints a table of ms per step (median over --repeats, CPU process time and wall time), images/s,
the time-shift overhead per step, and the loop overhead per step (loop minus network). Timings
are medians of whole loops; wall times on CUDA are taken after ``torch.cuda.synchronize()``.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from guided_diffusion.sampler.fast_path import apply_fast_path
from guided_diffusion.sampler.generate import SampleNoise
from guided_diffusion.io_util import write_text_atomic
from guided_diffusion.script_util import (
    PAPER_CIFAR10_FLAGS,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    str2bool,
)
from guided_diffusion.sampler.time_shift import TimeShift
from guided_diffusion.settings import FastPathConfig, ModelConfig, OutputConfig, TimeShiftConfig, add_settings

SEED_CONFIG = PAPER_CIFAR10_FLAGS
TINY_CONFIG = dict(SEED_CONFIG, image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="",
                   channel_mult="1")


class FreeModel(torch.nn.Module):
    """A 'network' that costs almost nothing: returns (x/2, x/2) for a learned-sigma model."""

    def forward(self, x, t, **kwargs):
        return torch.cat([x, x], dim=1).mul_(0.5)


class SeedLoop:
    """The seed code's per-step work (TS-DPM-ADM; docs/method.md), re-implemented to time it.

    Same arithmetic and the same avoidable costs: numpy tables copied to the device and indexed
    at every use, the timestep map rebuilt per call, the full posterior and a noise draw even for
    deterministic DDIM, a host read of the timestep, ``torch.var``, a Python list of B x window
    floats for the expected variances, and a list that keeps every state.
    """

    def __init__(self, diffusion):
        self.d = diffusion

    def _ex(self, arr, t, shape):
        res = torch.from_numpy(np.asarray(arr)).to(device=t.device)[t].float()
        return res.view(-1, *([1] * (len(shape) - 1))).expand(shape)

    def _p_mean_variance(self, model, x, t):
        d = self.d
        map_tensor = torch.tensor(d.timestep_map, device=t.device, dtype=t.dtype)
        out = model(x, map_tensor[t])
        eps_raw, v = torch.split(out, x.shape[1], dim=1)
        min_log = self._ex(d.posterior_log_variance_clipped, t, x.shape)
        max_log = self._ex(np.log(d.betas), t, x.shape)
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        var = torch.exp(log_var)
        x0 = (self._ex(d.sqrt_recip_alphas_cumprod, t, x.shape) * x
              - self._ex(d.sqrt_recipm1_alphas_cumprod, t, x.shape) * eps_raw).clamp(-1, 1)
        mean = (self._ex(d.posterior_mean_coef1, t, x.shape) * x0
                + self._ex(d.posterior_mean_coef2, t, x.shape) * x)
        return {"mean": mean, "variance": var, "log_variance": log_var, "pred_xstart": x0}

    def _window(self, xs, t, window, cutoff):
        d = self.d
        cur = d.timestep_map[int(t[0].item())]
        ws = window // 2
        flipped = list(d.base_alphas_cumprod[::-1])
        cands = list(range(cur - ws, min(cur + ws, 999) + 1)) if cur - ws > 0 else list(range(0, window + 1))
        b = xs[-1].shape[0]
        table = torch.tensor([[flipped[c] for c in cands] for _ in range(b)], dtype=torch.float64,
                             device=t.device)
        var = torch.var(xs[-1].view(b, -1), dim=-1)
        idx = ((var[:, None] - table) ** 2).argmin(dim=1)
        return torch.tensor(cands, device=t.device)[idx], cur

    def ddim(self, model, x, ts=None, eta=0.0):
        d = self.d
        xs = [x]
        prev_all = np.append(1.0, d.base_alphas_cumprod[:-1])
        for i in range(d.num_timesteps - 1, -1, -1):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            out = self._p_mean_variance(model, x, t)
            x0 = out["pred_xstart"]
            eps = (self._ex(d.sqrt_recip_alphas_cumprod, t, x.shape) * x - x0) / self._ex(
                d.sqrt_recipm1_alphas_cumprod, t, x.shape)
            ab = self._ex(d.alphas_cumprod, t, x.shape)
            abp = self._ex(d.alphas_cumprod_prev, t, x.shape)
            if ts is not None and len(xs) > 1:
                tau, cur = self._window(xs, t, ts.window, ts.cutoff)
                if cur > ts.cutoff:
                    off = 1000 // (d.num_timesteps - 1)
                    abp = torch.from_numpy(prev_all).to(x.device)[tau - off].float().view(-1, 1, 1, 1)
            sigma = eta * torch.sqrt((1 - abp) / (1 - ab)) * torch.sqrt((1 - ab / abp).clamp(min=0))
            noise = torch.randn_like(x)
            mean = x0 * torch.sqrt(abp) + torch.sqrt(1 - abp - sigma**2) * eps
            nonzero = (t != 0).float().view(-1, 1, 1, 1)
            x = mean + nonzero * sigma * noise
            xs.append(x)
        return x

    def ddpm(self, model, x):
        d = self.d
        xs = [x]
        for i in range(d.num_timesteps - 1, -1, -1):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            out = self._p_mean_variance(model, x, t)
            noise = torch.randn_like(x)
            nonzero = (t != 0).float().view(-1, 1, 1, 1)
            x = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
            xs.append(x)
        return x


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device, repeats, warmup):
    for _ in range(warmup):
        fn()
    cpu, wall = [], []
    for _ in range(repeats):
        _sync(device)
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        _sync(device)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def time_noise(shape, device, repeats):
    """Median time of one (B, C, H, W) draw of SampleNoise (a loop stream) and of torch.randn.

    CPU process time on CPU, wall time (after synchronize) on CUDA; the two are interleaved
    (alternating repeats) so that a busy machine slows both alike.
    """
    sn, idx = SampleNoise(0), torch.arange(shape[0], device=device)
    gen = lambda: sn.normal(idx, 1, shape[1:])  # noqa: E731
    ref = lambda: torch.randn(shape, device=device)  # noqa: E731
    times = {"noise": [], "randn": []}
    for _ in range(max(1, repeats)):
        for name, fn in (("noise", gen), ("randn", ref)):
            cpu, wall = time_fn(fn, device, 1, 1 if not times[name] else 0)
            times[name].append(cpu if device.type == "cpu" else wall)
    noise_s, randn_s = statistics.median(times["noise"]), statistics.median(times["randn"])
    return {"noise_ms": 1e3 * noise_s, "randn_ms": 1e3 * randn_s, "noise_over_randn": noise_s / randn_s}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="seed", choices=["seed", "tiny"], help="seed: the paper.s CIFAR-10 model "
                   "(57M); tiny: a small model for smoke tests")
    p.add_argument("--free_model", type=str2bool, default=False, help="replace the network by one that costs nothing")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (respacing N)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed_loop", type=str2bool, default=True, help="also time the seed code's loop")
    # the settings' own declarations, with this benchmark's defaults (a large batch, the fused attention)
    add_settings(p, OutputConfig, only=("batch_size",), defaults={"batch_size": 512})
    add_settings(p, TimeShiftConfig, only=("window", "cutoff"), defaults={"window": 8})
    add_settings(p, FastPathConfig, defaults={"attention": "sdpa"})
    add_settings(p, ModelConfig, only=("use_fp16",))
    p.add_argument("--noise_repeats", type=int, default=21, help="timed repetitions of the noise generator "
                   "measurement (median reported)")
    p.add_argument("--noise_only", type=str2bool, default=False, help="only time SampleNoise against torch.randn")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    cfg = dict(model_and_diffusion_defaults(), **(SEED_CONFIG if args.config == "seed" else TINY_CONFIG),
               timestep_respacing=str(args.steps))
    shape = (args.batch_size, 3, cfg["image_size"], cfg["image_size"])
    timing = "cpu" if device.type == "cpu" else "wall"
    noise = time_noise(shape, device, args.noise_repeats)
    print(f"{'per-sample noise (SampleNoise)':34s} {timing} {noise['noise_ms']:9.3f} ms   torch.randn "
          f"{noise['randn_ms']:9.3f} ms   ratio {noise['noise_over_randn']:.3f}", flush=True)
    if args.noise_only:
        summary = dict(noise, timing=timing, batch_size=args.batch_size, image_shape=list(shape[1:]),
                       device=describe(device))
        print(json.dumps(summary, indent=1))
        write_json(args.json, summary, [])
        return
    net, diffusion = create_model_and_diffusion(**cfg)
    net.to(device).eval()
    net.set_attention_impl("math")
    model = FreeModel() if args.free_model else net
    x_T = torch.randn(shape, device=device)
    S = args.steps
    rows = []

    def add(name, fn, network_ms=None, steps=S):
        cpu, wall = time_fn(fn, device, args.repeats, args.warmup)
        rows.append(dict(name=name, cpu_ms_per_step=1e3 * cpu / steps, wall_ms_per_step=1e3 * wall / steps,
                         images_per_s=args.batch_size / wall if steps == S else None))
        print(f"{name:34s} cpu {1e3 * cpu / steps:9.2f} ms/step   wall {1e3 * wall / steps:9.2f} ms/step", flush=True)

    t_mid = torch.full((args.batch_size,), 500, device=device, dtype=torch.long)
    with torch.no_grad():
        def forward_only(fn):
            def run():
                for _ in range(S):
                    fn(x_T, t_mid)
            return run

        add("network forward (x S)", forward_only(model))
        adm, pndm = TimeShift(args.window, args.cutoff, "adm"), TimeShift(args.window, args.cutoff, "pndm")
        add("ours DDIM", lambda: diffusion.ddim_sample_loop(model, shape, noise=x_T, time_shift=None))
        add("ours TS-DDIM (adm)", lambda: diffusion.ddim_sample_loop(model, shape, noise=x_T, time_shift=adm))
        add("ours TS-DDIM (pndm)", lambda: diffusion.ddim_sample_loop(model, shape, noise=x_T, time_shift=pndm))
        add("ours DDPM", lambda: diffusion.p_sample_loop(model, shape, noise=x_T, time_shift=None))
        add("ours TS-DDPM (adm)", lambda: diffusion.p_sample_loop(model, shape, noise=x_T, time_shift=adm))
        sn, idx = SampleNoise(0), torch.arange(args.batch_size, device=device)
        add("ours DDPM, per-sample seeded noise", lambda: diffusion.p_sample_loop(
            model, shape, noise=x_T, time_shift=None, noise_fn=lambda s, like: sn.normal(idx, s + 1, shape[1:])))
        if args.seed_loop:
            seed = SeedLoop(diffusion)
            add("seed DDIM", lambda: seed.ddim(model, x_T))
            add("seed TS-DDIM (adm)", lambda: seed.ddim(model, x_T, ts=adm))
            add("seed DDPM", lambda: seed.ddpm(model, x_T))
        fast = None
        if not args.free_model and (args.use_fp16 or args.autocast != "none" or args.channels_last or args.compile
                                    or args.attention == "sdpa"):
            if args.use_fp16:
                net.convert_to_fp16()
            fast = apply_fast_path(net, device=device, attention=args.attention, autocast=args.autocast,
                                   channels_last=args.channels_last, compile=args.compile)
            add("fast path: network forward (x S)", forward_only(fast))
            add("fast path: TS-DDIM (adm)", lambda: diffusion.ddim_sample_loop(fast, shape, noise=x_T, time_shift=adm))

    by = {r["name"]: r for r in rows}
    key = "cpu_ms_per_step" if device.type == "cpu" else "wall_ms_per_step"
    summary = {
        "device": describe(device),
        "timing": key, "batch_size": args.batch_size, "steps": S, "free_model": args.free_model,
        "config": args.config, "window": args.window, "cutoff": args.cutoff, **noise,
        "ts_overhead_ms_per_step_ddim": by["ours TS-DDIM (adm)"][key] - by["ours DDIM"][key],
        "ts_overhead_ms_per_step_ddpm": by["ours TS-DDPM (adm)"][key] - by["ours DDPM"][key],
        "loop_overhead_ms_per_step_ddim": by["ours DDIM"][key] - by["network forward (x S)"][key],
        "loop_overhead_ms_per_step_ddpm": by["ours DDPM"][key] - by["network forward (x S)"][key],
    }
    if args.seed_loop:
        summary.update(
            ddim_ratio_ours_over_seed=by["ours DDIM"][key] / by["seed DDIM"][key],
            ddpm_ratio_ours_over_seed=by["ours DDPM"][key] / by["seed DDPM"][key],
            seed_ts_overhead_ms_per_step=by["seed TS-DDIM (adm)"][key] - by["seed DDIM"][key],
        )
    if fast is not None:
        summary["fast_over_plain_network"] = by["fast path: network forward (x S)"][key] / by["network forward (x S)"][key]
        summary["images_per_s_plain_ts_ddim"] = by["ours TS-DDIM (adm)"]["images_per_s"]
        summary["images_per_s_fast_ts_ddim"] = by["fast path: TS-DDIM (adm)"]["images_per_s"]
    print(json.dumps(summary, indent=1))
    write_json(args.json, summary, rows)


def describe(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def write_json(path, summary, rows):
    if path:
        write_text_atomic(path, json.dumps({"summary": summary, "rows": rows, "argv": sys.argv[1:]}, indent=1))


if __name__ == "__main__":
    main()
