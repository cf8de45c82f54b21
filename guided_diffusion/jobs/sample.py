"""A sampling job: settings in, npz out, over one or more processes, resumably.

:class:`SamplingJob` holds the settings (one config per group of :mod:`guided_diffusion.settings`);
:func:`run_sampling` runs it. ``scripts/image_sample_1gpu.py``, ``scripts/image_sample.py``,
``scripts/fid_table.py`` and a notebook all call the same function::

    from guided_diffusion.jobs.sample import SamplingJob, run_sampling
    job = SamplingJob.from_flags(dict(timestep_respacing="ddim10", use_ddim=True, do_time_shift=True,
                                      window=40, cutoff=300, num_samples=64, out_dir="out"))
    path = run_sampling(job.with_demo_model())   # the bundled demo model; or set model_path + model flags

How a run goes, with W processes (W = 1 without a process group); steps 2-4 are the resumable-parts
runner's (:func:`guided_diffusion.jobs.runner.run_parts`, shared with the NLL job), this module states
what one batch is (:class:`_SamplingParts`):

1. every rank checks the settings; rank 0 reads the checkpoint and broadcasts it (in chunks);
2. rank 0 prepares ``OUT.npz.parts/`` (see :mod:`guided_diffusion.jobs.parts`): finished parts
   made with the same pixel settings are kept, different settings are refused, and the indices
   still missing are cut into batches of ``batch_size``;
3. batch j goes to rank j % W; ranks work in rounds (one batch each) and after every round sum
   (samples done, failures) with one all_reduce: rank 0's progress bar counts every rank, and a
   failure on any rank (e.g. a NaN sample) stops all of them after that round, with one error
   line from the failing rank and exit status 2. Each finished batch is a part file, written
   atomically before the round ends, so a killed process loses only its batch in flight;
4. rank 0 streams the parts, in index order, into ``OUT.npz`` (one part in memory at a time),
   renames it into place and removes the parts unless ``keep_parts``.

The result depends only on the pixel settings and the checkpoint: the same bytes for any batch
size, process count, or number of interruptions.
"""

import dataclasses
import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from .. import diffusers_model, dist_util, io_util
from . import control
from . import parts as sample_parts
from ..checkpoint import CheckpointError, load_checkpoint_into
from ..sampler import grids
from .runner import PartsJob, build_network, read_on_rank0, run_parts, say
from ..sampler.corrections import Corrections
from ..sampler.fast_path import apply_fast_path
from ..sampler.generate import generate_samples
from ..sampler.loop import Sampler
from ..sampler.solvers import nfe
from ..script_util import classifier_from_configs, diffusion_from_config
from ..settings import (
    SAMPLING_GROUPS,
    BaseSamplesConfig,
    ClassifierConfig,
    DiffusionConfig,
    GuidanceConfig,
    SuperResConfig,
    OneLineErrorParser,
    add_settings,
    FastPathConfig,
    ModelConfig,
    RunConfig,
    SamplerConfig,
    TimeShiftConfig,
    UPSTREAM_UNUSED_SAMPLING_FLAGS,
    config_from_dict,
    format_number,
    name_suffix,
    pixel_settings,
)

_GROUPS = {
    "run": RunConfig,
    "sampler": SamplerConfig,
    "time_shift": TimeShiftConfig,
    "fast": FastPathConfig,
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
}
# Groups a job has only when asked for (``SamplingJob.from_flags(..., extras=...)``): classifier
# guidance ("guidance" + "classifier") and super-resolution ("super_res" + "base"). A job without
# them has exactly the settings, resume metadata and output name it had before they existed.
_OPTIONAL_GROUPS = {
    "guidance": GuidanceConfig,
    "classifier": ClassifierConfig,
    "super_res": SuperResConfig,
    "base": BaseSamplesConfig,
}
GUIDANCE_GROUPS = ("guidance", "classifier")
SUPER_RES_GROUPS = ("super_res", "base")


def sampling_parser(description=None, epilog=None):
    """The flags of the sampling scripts, derived from the declarations (``--help`` lists them all)."""
    import argparse

    parser = OneLineErrorParser(description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(parser, *SAMPLING_GROUPS)
    return add_settings(parser, GuidanceConfig, ClassifierConfig, only=UPSTREAM_UNUSED_SAMPLING_FLAGS,
                        note="accepted for upstream compatibility; unused by this command")


def parse_sampling_flags(argv=None, description=None, epilog=None, parser=None, extras=(), demo_model=True):
    """Parse the sampling flags into a :class:`SamplingJob` (and the namespace, for extra flags).

    With no ``--model_path`` and no model flags, the job uses the bundled demo model with its own
    flags (and its ``data_type``/``model_type`` names unless given); see :mod:`guided_diffusion.demo`.
    ``extras``: optional groups of the job (:data:`GUIDANCE_GROUPS`, :data:`SUPER_RES_GROUPS`);
    their flags must be in ``parser``. ``demo_model=False``: never switch to the demo model.
    """
    from .. import demo

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = parser or sampling_parser(description, epilog)
    args = parser.parse_args(argv)
    job = SamplingJob.from_flags(args, extras=extras)
    return (demo.maybe_use_demo(job, argv) if demo_model else job), args


def sampler_from_configs(sampler_cfg, ts_cfg):
    """The loop's :class:`~guided_diffusion.sampler.loop.Sampler` from the settings: the one place they meet."""
    sampler_cfg.validate()
    c = sampler_cfg
    return Sampler(
        kind=c.solver_name(),
        eta=float(c.eta),
        clip_denoised=bool(c.clip_denoised),
        time_shift=ts_cfg.to_time_shift(),
        corrections=Corrections(eps_scale=float(c.eps_scale), eps_scale_k=float(c.eps_scale_k),
                                dcw_low=float(c.dcw_low), dcw_high=float(c.dcw_high)),
    )


@dataclass
class SamplingJob:
    """All settings of one sampling run, one config per group (see :mod:`guided_diffusion.settings`)."""

    run: RunConfig = field(default_factory=RunConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    time_shift: TimeShiftConfig = field(default_factory=TimeShiftConfig)
    fast: FastPathConfig = field(default_factory=FastPathConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    guidance: Optional[GuidanceConfig] = None  # classifier guidance (with ``classifier``)
    classifier: Optional[ClassifierConfig] = None
    super_res: Optional[SuperResConfig] = None  # super-resolution (with ``base``)
    base: Optional[BaseSamplesConfig] = None

    @classmethod
    def from_flags(cls, flags, extras=()):
        """From a flat dict or argparse namespace of flag names (missing ones take their defaults).

        ``extras``: names of optional groups to include (e.g. :data:`GUIDANCE_GROUPS`). With
        "super_res", ``image_size`` is set to ``large_size`` (the size of the samples).
        """
        values = dict(vars(flags) if not isinstance(flags, dict) else flags)
        unknown = sorted(set(extras) - set(_OPTIONAL_GROUPS))
        if unknown:
            raise TypeError(f"unknown optional sampling group(s): {', '.join(unknown)}")
        if "super_res" in extras:
            values["image_size"] = values.get("large_size", SuperResConfig.large_size)
        kw = {group: config_from_dict(c, values) for group, c in _GROUPS.items()}
        kw.update({group: config_from_dict(_OPTIONAL_GROUPS[group], values) for group in extras})
        return cls(**kw)

    def extras(self):
        """The optional groups this job has, in declaration order."""
        return tuple(g for g in _OPTIONAL_GROUPS if getattr(self, g) is not None)

    def flags(self):
        """The flat {flag name: value} dict (the inverse of :meth:`from_flags`)."""
        out = {}
        for group in tuple(_GROUPS) + self.extras():
            out.update(dataclasses.asdict(getattr(self, group)))
        return out

    def with_flags(self, **changes):
        """A copy with some flags changed by name (a name shared by two groups changes both)."""
        known = set(self.flags())
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown sampling setting(s): {', '.join(unknown)}")
        return SamplingJob.from_flags({**self.flags(), **changes}, extras=self.extras())

    def with_demo_model(self):
        """A copy that samples the bundled demo model (its checkpoint, model flags and names)."""
        from .. import demo

        return self.with_flags(**demo.demo_settings())

    def configs(self):
        return [getattr(self, group) for group in tuple(_GROUPS) + self.extras()]

    def sampler_obj(self):
        return sampler_from_configs(self.sampler, self.time_shift)

    def pixel_settings(self):
        """The settings that decide the pixels of sample k (stored in, and compared with, the parts' meta)."""
        return pixel_settings(*self.configs())

    def output_filename(self):
        """Upstream's name: ``{model_type}_{data_type}_{respacing}step[_{window}win_{cutoff}cut].npz``.

        ``_pndm`` is appended for ``ts_rule pndm`` so the two rules never overwrite each other, and
        each sampler setting that declares a name suffix adds it when not at its default.
        """
        run, ts = self.run, self.time_shift
        name = f"{run.model_type}_{run.data_type}_{grids.grid_label(self.diffusion.timestep_respacing)}step"
        if ts.do_time_shift:
            name += f"_{ts.window}win_{ts.cutoff}cut"
            if ts.ts_rule != "adm":
                name += f"_{ts.ts_rule}"
        name += name_suffix(self.sampler, self.fast)
        if self.guidance is not None:
            name += f"_cls{format_number(self.guidance.classifier_scale)}"
        if self.super_res is not None:
            name += f"_sr{self.super_res.small_size}to{self.super_res.large_size}"
        return name + ".npz"

    def output_path(self):
        return os.path.join(self.run.out_dir, self.output_filename())

    def validate(self):
        """One-line errors for settings that cannot work (raised before any work)."""
        self.run.validate()
        if self.guidance is not None and not self.guidance.classifier_path:
            raise ValueError("--classifier_path is empty: pass the noisy-image classifier checkpoint")
        if self.super_res is not None:
            sr = self.super_res
            if sr.small_size >= sr.large_size:
                raise ValueError(f"--small_size ({sr.small_size}) must be smaller than --large_size ({sr.large_size})")
            if self.model.image_size != sr.large_size:
                raise ValueError(f"image_size {self.model.image_size} differs from --large_size {sr.large_size}")
        if self.base is not None and not self.base.base_samples:
            raise ValueError("--base_samples is empty: pass the npz of low-resolution images to upsample")
        sampler = self.sampler_obj()
        if sampler.corrections.active:
            steps = diffusion_from_config(self.diffusion).num_timesteps
            sampler.corrections.validate(self.model.image_size, steps)


def build_model(job, device, checkpoint_bytes=None):
    """The network for ``job``: :func:`~guided_diffusion.jobs.runner.build_network`, then the fast path."""
    model = build_network(job.model, job.diffusion, job.run.model_path, device, data=checkpoint_bytes,
                          super_res=job.super_res)
    fast = job.fast
    runner = apply_fast_path(model, device=device, attention=fast.attention, autocast=fast.autocast,
                             channels_last=fast.channels_last, compile=fast.compile)
    if runner is not model:
        runner.num_classes = model.num_classes
    return runner


def build_model_and_diffusion(job, device, checkpoint_bytes=None):
    """The network and the diffusion of ``job``; a ``file:`` grid must have been made for this checkpoint."""
    model = build_model(job, device, checkpoint_bytes)
    diffusion = diffusion_from_config(job.diffusion, sigma_small=diffusers_model.sigma_small_of(checkpoint_bytes))
    if grids.is_grid_file(job.diffusion.timestep_respacing):
        if checkpoint_bytes is None:
            checkpoint_bytes = diffusers_model.read_model_bytes(job.run.model_path)
        note = grids.check_grid_checkpoint(job.diffusion.timestep_respacing, hashlib.sha256(checkpoint_bytes).hexdigest(),
                                           solver=job.sampler.solver_name())
        if note and dist_util.get_rank() == 0:
            sys.stderr.write(note + "\n")
    return model, diffusion


def _read_flags_json(path):
    import json

    try:
        with io_util.open_read(path, "r") as f:
            info = json.load(f)
    except OSError as exc:
        raise ValueError(f"flags {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ValueError(f"flags {path}: not JSON ({exc})") from None
    if not isinstance(info, dict):
        raise ValueError(f"flags {path}: expected a JSON object of model flags")
    return dict(info.get("model_flags", info))


def load_model(checkpoint=None, flags=None, device="cpu", timestep_respacing=""):
    """One call from a checkpoint to ``(model, diffusion)``, ready to sample, on ``device``.

    :param checkpoint: a ``.pt`` state_dict (loaded strictly, ``weights_only=True``); None: the bundled
        demo model.
    :param flags: the model and diffusion flags: None reads ``<checkpoint name>.json`` beside the
        checkpoint (its "model_flags", as the demo model and the tuner write them); a path to such a
        JSON file; or a dict ``{flag name: value}`` (missing flags take upstream's defaults).
    :param timestep_respacing: the sampling grid, e.g. "ddim10" ("" = every timestep).
    :return: the network in eval mode (``model(x, t)``: x (N, C, H, W), t (N,) original timesteps) and
        the respaced diffusion (its ``timestep_map`` maps respaced indices to original timesteps).
    """
    from .. import demo

    if checkpoint is None:
        checkpoint = demo.DEMO_CHECKPOINT
    checkpoint = str(checkpoint)
    if not io_util.isfile(checkpoint):
        raise CheckpointError(f"checkpoint {checkpoint}: no such file")
    if flags is None:
        sidecar = os.path.splitext(checkpoint)[0] + ".json"
        if not io_util.isfile(sidecar):
            raise ValueError(f"checkpoint {checkpoint}: no flags given and no {sidecar} beside it; pass "
                             "flags={...} (the model flags it was trained with) or the path of a flags JSON")
        flags = _read_flags_json(sidecar)
    elif isinstance(flags, (str, os.PathLike)):
        flags = _read_flags_json(flags)
    job = SamplingJob.from_flags({**dict(flags), "model_path": checkpoint, "timestep_respacing": timestep_respacing})
    return build_model_and_diffusion(job, torch.device(device))


def build_classifier(job, device, checkpoint_bytes=None):
    """The job's noisy-image classifier, its checkpoint loaded strictly, in eval mode on ``device``."""
    classifier = classifier_from_configs(job.classifier, job.model)
    try:
        load_checkpoint_into(classifier, job.guidance.classifier_path, data=checkpoint_bytes)
    except CheckpointError as exc:
        text = str(exc).replace("--model_path", "--classifier_path").replace("the model flags", "the classifier flags")
        raise CheckpointError(text) from None
    classifier.to(device)
    if job.classifier.classifier_use_fp16:
        classifier.convert_to_fp16()
    return classifier.eval()


def build_conditioning(job, device):
    """Collective: the job's conditioning (classifier guidance or low-resolution inputs) or None, and
    {"classifier_sha256" / "base_samples_sha256": hex} for the resume metadata (rank 0's; None elsewhere)."""
    import io

    import numpy as np

    from ..sampler.conditioning import ClassifierGuidance, LowResInputs

    if job.guidance is not None:
        data, sha = read_on_rank0(job.guidance.classifier_path, "--classifier_path")
        out = exc = None
        try:
            classifier = build_classifier(job, device, checkpoint_bytes=data)
            out = ClassifierGuidance(classifier, job.guidance.classifier_scale, job.classifier.classifier_num_classes)
        except Exception as e:
            exc = e
        dist_util.check_all(exc)
        return out, {"classifier_sha256": sha}
    if job.base is not None:
        path = job.base.base_samples
        data, sha = read_on_rank0(path, "--base_samples")
        out = exc = None
        try:
            try:
                with np.load(io.BytesIO(data), allow_pickle=False) as z:
                    images = z["arr_0"]
                    labels = z["arr_1"] if "arr_1" in z.files else None
            except Exception as e:
                raise ValueError(f"--base_samples {path}: not an npz with arr_0 ({type(e).__name__}: {e})") from None
            small = job.super_res.small_size
            if images.ndim < 3 or images.shape[1:3] != (small, small):
                raise ValueError(f"--base_samples {path}: arr_0 has shape {images.shape}, expected (N, {small}, "
                                 f"{small}, C) for --small_size {small}")
            out = LowResInputs(images, labels, image_channels=job.model.image_channels)
        except Exception as e:
            exc = e
        dist_util.check_all(exc)
        return out, {"base_samples_sha256": sha}
    return None, {}


def _device_description(device):
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


class _SamplingParts(PartsJob):
    """One sampling run as a :class:`~guided_diffusion.jobs.runner.PartsJob`: a batch is samples
    start..end-1 (:func:`~guided_diffusion.sampler.generate.generate_samples`) into one part."""

    def __init__(self, job, model, diffusion, device, conditioning, checkpoint_sha256, input_sha256,
                 on_part_written):
        self.job, self.model, self.diffusion, self.device = job, model, diffusion, device
        self.conditioning, self.on_part_written = conditioning, on_part_written
        self.checkpoint_sha256, self.input_sha256 = checkpoint_sha256, input_sha256
        run = job.run
        self.out_path, self.num, self.batch_size, self.overwrite = (job.output_path(), run.num_samples,
                                                                    run.batch_size, run.overwrite)
        self.with_labels = model.num_classes is not None or job.guidance is not None
        self.image_shape = (job.model.image_size, job.model.image_size, 3)
        self.sample_kwargs = dict(
            shape=(job.model.image_channels, job.model.image_size, job.model.image_size),
            seed=job.sampler.seed,
            sampler=job.sampler_obj(),
            num_classes=model.num_classes,
            conditioning=conditioning,
            trace=job.sampler.save_trace,
        )

    def meta(self):
        return {
            "flags": {**self.job.pixel_settings(), "checkpoint_sha256": self.checkpoint_sha256, **self.input_sha256},
            "info": {
                "model_path": os.path.abspath(self.job.run.model_path),
                "device": _device_description(self.device),
                "torch": torch.__version__,
            },
        }

    def prepare_kwargs(self):
        return dict(image_shape=self.image_shape, with_labels=self.with_labels)  # kept parts are verified

    def run_batch(self, parts_dir, start, end):
        batch = next(generate_samples(self.model, self.diffusion, range(start, end), batch_size=end - start,
                                      device=self.device, **self.sample_kwargs))
        path = sample_parts.write_part(parts_dir, start, batch.images, batch.labels, batch.trace)
        if self.on_part_written is not None:
            self.on_part_written(path)
        return [end - start]

    def progress(self, already):
        return _Bar(self.num, already, dist_util.get_world_size()) if self.job.run.progress else None

    def finish(self, parts_dir):
        """Stream the parts, in index order, into the npz (one part in memory at a time); its json,
        trace and grids; the parts removed unless ``keep_parts``."""
        job, run, diffusion, out_path = self.job, self.job.run, self.diffusion, self.out_path
        grid = sample_parts.assemble(parts_dir, out_path, num_samples=run.num_samples, image_shape=self.image_shape,
                                     with_labels=self.with_labels,
                                     grid_size=max(run.grid_size if run.grid else 0, compare_grid_size(job)))
        print(f"wrote {out_path}", flush=True)
        meta_path = meta_path_for(out_path)
        write_run_meta(meta_path, job, diffusion, self.checkpoint_sha256, self.device, extra=self.input_sha256)
        print(f"wrote {meta_path}", flush=True)
        if job.sampler.save_trace:
            trace_path = trace_path_for(out_path)
            write_trace(trace_path, job, diffusion, sample_parts.read_trace(parts_dir, run.num_samples,
                                                                            diffusion.num_timesteps))
            print(f"wrote {trace_path}", flush=True)
        if not run.keep_parts:
            sample_parts.remove_parts(parts_dir)
        if run.grid and grid is not None:
            from .figures import save_grid_png

            save_grid_png(run.grid, grid[: run.grid_size])
            print(f"wrote {run.grid}", flush=True)
        if run.compare_grid:
            n = compare_grid_size(job)
            write_compare_grid(job, self.model, diffusion, self.device, conditioning=self.conditioning,
                               own=None if grid is None else grid[:n])
            print(f"wrote {run.compare_grid}", flush=True)
        return out_path


class _Bar:
    """Rank 0's progress bar over every rank's samples."""

    def __init__(self, total, already, world):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=int(already), unit="img", desc=f"sampling x{world}", smoothing=0.1)

    def update(self, round_counts, counters):
        self.bar.update(int(round_counts[0]))

    def close(self):
        self.bar.close()


@control.sampling_job  # the output lock, SIGTERM/SIGINT at a round boundary (see jobs/control.py)
def run_sampling(job, device=None, on_part_written=None):
    """Generate samples 0..num_samples-1 of ``job`` over all ranks, resumably; rank 0 writes the npz.

    Call :func:`guided_diffusion.dist_util.setup_dist` first for several processes (without it
    this is a single process). Returns the npz path on rank 0, None on the others. The lock,
    rounds, parts and assembly order are :func:`guided_diffusion.jobs.runner.run_parts`'s; this
    function sets up the model and states what one batch does (:class:`_SamplingParts`).

    :param job: a :class:`SamplingJob`.
    :param device: torch device (default: this rank's, from ``dist_util.dev()``).
    :param on_part_written: optional callback ``(path)`` after each part file this rank writes.
    :raises guided_diffusion.errors.StopRun: on ranks other than the one that reports a failure.
    """
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    device = dist_util.dev() if device is None else torch.device(device)
    run = job.run

    # settings, checkpoint (read once on rank 0, broadcast), model.
    exc = None
    try:
        job = diffusers_model.resolve_job(job)  # a diffusers folder's configs set the diffusion
        job.validate()
        job.sampler_obj()
    except Exception as e:
        exc = e
    dist_util.check_all(exc)

    def check_path():
        if not run.model_path:
            raise CheckpointError("--model_path is empty: pass the checkpoint file to sample from "
                                  "(or no model flags at all for the bundled demo model)")

    dist_util.on_rank0(check_path)
    data, checkpoint_sha256 = read_on_rank0(run.model_path, "--model_path", model=True)
    model = diffusion = None
    try:
        model, diffusion = build_model_and_diffusion(job, device, checkpoint_bytes=data)
    except Exception as e:
        exc = e
    del data
    dist_util.check_all(exc)
    conditioning, input_sha256 = build_conditioning(job, device)
    if rank == 0:
        line = grid_start_warning(diffusion)
        if line:
            say(f"warning: {line}")

    def report(stats):
        if rank == 0 and run.progress and stats.made:
            say(f"sampled {stats.made} images in {stats.seconds:.1f} s ({stats.made / stats.seconds:.2f} images/s, "
                f"{world} process(es))")

    return run_parts(_SamplingParts(job, model, diffusion, device, conditioning, checkpoint_sha256, input_sha256,
                                    on_part_written), on_rounds_done=report)


GRID_START_SIGNAL = 0.05  # alpha_bar above which starting from pure noise is worth a warning


def grid_start_warning(diffusion):
    """A one-line warning when the respaced grid's first timestep keeps much signal (alpha_bar above
    :data:`GRID_START_SIGNAL`) although every loop starts there from pure noise, else ''.

    E.g. ``quadN`` ends at 0.8 T: alpha_bar(800) = 0.093 under the cosine schedule (0.0015 linear).
    """
    first = int(max(diffusion.timestep_map))
    alpha_bar = float(diffusion.base_alphas_cumprod[first])
    if alpha_bar <= GRID_START_SIGNAL:
        return ""
    return (f"the timestep grid starts at t = {first}, where alpha_bar = {alpha_bar:.3f} (signal std "
            f"{alpha_bar ** 0.5:.2f}), but sampling starts there from pure noise; prefer a grid that starts "
            f"near T - 1 (e.g. --timestep_respacing {len(diffusion.timestep_map)}) for this noise schedule")


def run_sampling_on_ranks(job):
    """What the multi-process sampling scripts run: honour ``--gpu_id``, join the process group
    (one process when not launched by mpiexec / torchrun), :func:`run_sampling`, leave the group."""
    if job.run.gpu_id:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.run.gpu_id  # before CUDA starts
    dist_util.setup_dist(backend="gloo")  # only tiny messages: gloo, also when ranks share a GPU
    try:
        return run_sampling(job, device=dist_util.dev())
    finally:
        dist_util.cleanup()


def meta_path_for(npz_path):
    """``OUT.npz`` -> ``OUT.json`` (the npz's metadata: settings, NFE, checkpoint hash)."""
    return (npz_path[: -len(".npz")] if npz_path.endswith(".npz") else npz_path) + ".json"


def write_run_meta(path, job, diffusion, checkpoint_sha256, device, extra=None):
    """JSON beside the npz: every setting, steps, NFE, the checkpoint's SHA-256, device and torch
    (``extra``: more entries, e.g. the classifier's SHA-256)."""
    import json

    from ..io_util import write_text_atomic

    sampler = job.sampler_obj()
    meta = {
        "npz": os.path.basename(path[: -len(".json")] + ".npz"),
        "num_samples": job.run.num_samples,
        "sampler": sampler.describe(),
        "steps": diffusion.num_timesteps,
        "nfe": nfe(sampler.kind, diffusion.num_timesteps, ends_clean=True),  # the warm-up calls included
        "timesteps": [int(t) for t in reversed(diffusion.timestep_map)],
        "settings": job.flags(),
        "checkpoint_sha256": checkpoint_sha256,
        "device": _device_description(device),
        "torch": torch.__version__,
        **(extra or {}),
    }
    write_text_atomic(path, json.dumps(meta, indent=1, sort_keys=True) + "\n")


def trace_path_for(npz_path):
    """``OUT.npz`` -> ``OUT_trace.npz``."""
    return npz_path[: -len(".npz")] + "_trace.npz" if npz_path.endswith(".npz") else npz_path + "_trace.npz"


def write_trace(path, job, diffusion, timesteps):
    """The per-sample trace file: ``timesteps`` (N, S) int32 matched original timestep per sample and
    step (-1 where the step was not shifted), ``nominal`` (S,) the grid's original timesteps in loop
    order, ``window_lo`` / ``window_hi`` (S,) each step's clamped window (-1 where not eligible),
    ``edge_fraction`` (share of shifted picks on either edge of the window) and ``noisy_edge_fraction``."""
    from ..io_util import save_npz_atomic
    from ..sampler.time_shift import is_eligible, shift_trace, shift_window

    tmap = diffusion.timestep_map
    S, T = len(tmap), len(diffusion.base_alphas_cumprod)
    nominal = [tmap[i] for i in range(S - 1, -1, -1)]
    lo, hi = [-1] * S, [-1] * S
    ts = job.time_shift.to_time_shift()
    for step, i in enumerate(range(S - 1, -1, -1)):
        nxt = tmap[i - 1] if i > 0 else -1
        if ts is not None and is_eligible(ts, tmap[i], nxt, first_step=step == 0):
            lo[step], hi[step] = shift_window(ts, tmap[i], nxt, T)
    arrays = shift_trace(timesteps, nominal, lo, hi)
    save_npz_atomic(path, **{k: v.numpy() for k, v in arrays.items()})


def compare_grid_size(job):
    """Samples per panel of the ``--compare_grid`` PNG (0 without one)."""
    return min(job.run.grid_size, job.run.num_samples) if job.run.compare_grid else 0


def write_compare_grid(job, model, diffusion, device, conditioning=None, own=None):
    """PNG: the first ``grid_size`` samples without (left) and with (right) the time shift, same seeds.

    :param own: the run's own first samples, (n, H, W, 3) uint8, n = :func:`compare_grid_size`: they are
        the panel of the job's own setting (right with ``do_time_shift``, else left), so only the other
        panel is sampled. Image k depends only on (seed, k), so it equals a fresh draw. None: sample both.
    """
    from .figures import save_comparison_png

    n = compare_grid_size(job)
    plain = sampler_from_configs(job.sampler, dataclasses.replace(job.time_shift, do_time_shift=False))
    shifted = sampler_from_configs(job.sampler, dataclasses.replace(job.time_shift, do_time_shift=True))
    name = plain.kind.upper()
    steps = job.diffusion.timestep_respacing or "all"
    ts = job.time_shift
    titles = (f"{name}, {steps} steps", f"TS-{name} (w={ts.window}, c={ts.cutoff}, {ts.ts_rule})")
    panels = [None, None]
    if own is not None and len(own) == n:
        panels[1 if ts.do_time_shift else 0] = own
    for k, sampler in enumerate((plain, shifted)):
        if panels[k] is not None:
            continue
        if job.run.progress:
            say(f"comparison grid: sampling the {titles[k].split(' (')[0]} panel ({n} samples)")
        started = time.time()
        batch = next(generate_samples(model, diffusion, range(n), batch_size=n, device=device, sampler=sampler,
                                      shape=(job.model.image_channels, job.model.image_size, job.model.image_size),
                                      seed=job.sampler.seed, num_classes=model.num_classes,
                                      conditioning=conditioning))
        panels[k] = batch.images
        if job.run.progress:
            say(f"comparison grid: {n} samples in {time.time() - started:.1f} s")
    save_comparison_png(job.run.compare_grid, panels[0], panels[1], titles)
