"""Configuration and factories, with upstream's flag names and functions.

Each concern is one dataclass whose fields *are* the upstream flag names: :class:`ModelConfig`,
:class:`DiffusionConfig` and :class:`TimeShiftConfig`. ``model_and_diffusion_defaults()`` merges
them into upstream's flat dict, ``create_model_and_diffusion(**kw)`` accepts that dict (every key
upstream accepted, including DDPM-IP's ``input_pertub``, ``perturb_schedule_type``,
``perturb_cutoff``), and argparse flags are generated from the same fields.
"""

import argparse
import dataclasses
from dataclasses import dataclass, fields

from . import gaussian_diffusion as gd
from .respace import SpacedDiffusion, space_timesteps
from .schedules import get_named_beta_schedule
from .time_shift import TS_RULES, TimeShift
from .unet import EncoderUNetModel, SuperResModel, UNetModel

NUM_CLASSES = 1000

DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}


@dataclass
class ModelConfig:
    """UNet architecture (upstream flag names)."""

    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    num_heads: int = 4
    num_heads_upsample: int = -1
    num_head_channels: int = -1
    attention_resolutions: str = "16,8"
    channel_mult: str = ""
    dropout: float = 0.0
    class_cond: bool = False
    use_checkpoint: bool = False
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_fp16: bool = False
    use_new_attention_order: bool = False
    learn_sigma: bool = False
    image_channels: int = 3


@dataclass
class DiffusionConfig:
    """Gaussian diffusion process (upstream flag names; ``learn_sigma`` is shared with the model)."""

    learn_sigma: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    timestep_respacing: str = ""
    use_kl: bool = False
    predict_xstart: bool = False
    rescale_timesteps: bool = False
    rescale_learned_sigmas: bool = False
    input_pertub: float = 0.0
    perturb_schedule_type: str = "linear"
    perturb_cutoff: int = 0


@dataclass
class TimeShiftConfig:
    """Time-shift sampler settings (upstream names plus ``ts_rule``)."""

    do_time_shift: bool = False
    window: int = 2
    cutoff: int = 300
    ts_rule: str = "adm"

    def to_time_shift(self):
        if not self.do_time_shift:
            return None
        return TimeShift(window=int(self.window), cutoff=int(self.cutoff), rule=self.ts_rule)


HELP = {
    "image_size": "image resolution (pixels per side)",
    "num_channels": "base channel width of the UNet",
    "num_res_blocks": "residual blocks per resolution level",
    "num_heads": "attention heads (ignored when num_head_channels != -1)",
    "num_heads_upsample": "attention heads in the decoder (-1: same as num_heads)",
    "num_head_channels": "fixed channels per attention head (-1: use num_heads)",
    "attention_resolutions": "comma list of feature-map sizes that get attention, e.g. 16,8",
    "channel_mult": "comma list of channel multipliers per level ('' = default for image_size)",
    "dropout": "dropout rate in residual blocks",
    "class_cond": "class-conditional model (True/False)",
    "use_checkpoint": "gradient checkpointing to save memory in training",
    "use_scale_shift_norm": "FiLM-style scale-shift conditioning in residual blocks",
    "resblock_updown": "use residual blocks for up/downsampling",
    "use_fp16": "run the UNet trunk in float16 (upstream semantics)",
    "use_new_attention_order": "split qkv before heads; NOT visible in checkpoint keys: must match training",
    "learn_sigma": "the model also outputs the variance (6 channels for RGB)",
    "image_channels": "image channels: 3 for RGB, 1 for grey-scale models",
    "diffusion_steps": "T, the number of steps of the base diffusion process",
    "noise_schedule": "beta schedule: linear or cosine",
    "timestep_respacing": "sampling steps: '' (all), 'N', 'a,b,c' (per section) or 'ddimN'",
    "use_kl": "train with the variational bound (KL) loss",
    "predict_xstart": "the model predicts x0 instead of epsilon",
    "rescale_timesteps": "feed the network t scaled to 0..1000",
    "rescale_learned_sigmas": "rescale the VB term of the hybrid loss (RESCALED_MSE)",
    "input_pertub": "DDPM-IP input perturbation gamma (training only)",
    "perturb_schedule_type": "DDPM-IP gamma schedule over timesteps: linear, cosine or constant",
    "perturb_cutoff": "no input perturbation on the last N timesteps",
    "do_time_shift": "use the time-shift sampler (TS-DDIM / TS-DDPM)",
    "window": "time-shift search window, in original timesteps (0 disables the shift)",
    "cutoff": "no time shift at or below this original timestep",
    "ts_rule": "time-shift rule: adm (TS-DPM-ADM code) or pndm (TS-DPM DDPM-backbone code)",
}

_CONFIGS = (ModelConfig, DiffusionConfig, TimeShiftConfig)


def _field_names(cls):
    return [f.name for f in fields(cls)]


def model_and_diffusion_defaults():
    """Upstream's flat dict of model, diffusion and time-shift defaults."""
    out = {}
    for cls in _CONFIGS:
        out.update(dataclasses.asdict(cls()))
    return out


def configs_from_kwargs(**kwargs):
    """Split a flat upstream kwargs dict into (ModelConfig, DiffusionConfig, TimeShiftConfig).

    Missing keys take their defaults; unknown keys raise TypeError naming them.
    """
    known = set(model_and_diffusion_defaults())
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"unknown model/diffusion keyword(s): {', '.join(unknown)}")
    return tuple(cls(**{k: kwargs[k] for k in _field_names(cls) if k in kwargs}) for cls in _CONFIGS)


def create_model_and_diffusion(**kwargs):
    """Build (model, diffusion) from upstream's flat keywords (see ``model_and_diffusion_defaults``)."""
    model_cfg, diff_cfg, ts_cfg = configs_from_kwargs(**kwargs)
    model = create_model(**dataclasses.asdict(model_cfg))
    diffusion = _diffusion_from_configs(diff_cfg, ts_cfg)
    return model, diffusion


def _diffusion_from_configs(diff_cfg, ts_cfg):
    return create_gaussian_diffusion(
        steps=diff_cfg.diffusion_steps,
        **{k: v for k, v in dataclasses.asdict(diff_cfg).items() if k != "diffusion_steps"},
        **dataclasses.asdict(ts_cfg),
    )


def parse_channel_mult(channel_mult, image_size):
    """"" -> the default for ``image_size``; "1,2,2" -> (1, 2, 2); floats allowed (0.5)."""
    if isinstance(channel_mult, (tuple, list)):
        return tuple(channel_mult)
    if not channel_mult:
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(
                f"image_size {image_size} has no default channel_mult; pass --channel_mult, e.g. 1,2,2"
            )
        return DEFAULT_CHANNEL_MULT[image_size]
    try:
        values = [float(v) for v in str(channel_mult).split(",")]
    except ValueError:
        raise ValueError(f"channel_mult {channel_mult!r}: expected a comma list of numbers") from None
    return tuple(int(v) if v.is_integer() else v for v in values)


def parse_attention_resolutions(attention_resolutions, image_size):
    """"16,8" at image_size 32 -> (2, 4): downsample factors that get attention."""
    if isinstance(attention_resolutions, (tuple, list)):
        return tuple(attention_resolutions)
    text = str(attention_resolutions).strip()
    if not text:
        return ()
    try:
        return tuple(image_size // int(res) for res in text.split(","))
    except (ValueError, ZeroDivisionError):
        raise ValueError(
            f"attention_resolutions {attention_resolutions!r}: expected a comma list of sizes, e.g. 16,8"
        ) from None


def create_model(
    image_size,
    num_channels,
    num_res_blocks,
    channel_mult="",
    learn_sigma=False,
    class_cond=False,
    use_checkpoint=False,
    attention_resolutions="16",
    num_heads=1,
    num_head_channels=-1,
    num_heads_upsample=-1,
    use_scale_shift_norm=False,
    dropout=0,
    resblock_updown=False,
    use_fp16=False,
    use_new_attention_order=False,
    image_channels=3,
):
    """The ADM ``UNetModel`` for these flags (upstream ``create_model``)."""
    return UNetModel(
        image_size=image_size,
        in_channels=image_channels,
        model_channels=num_channels,
        out_channels=image_channels * (2 if learn_sigma else 1),
        num_res_blocks=num_res_blocks,
        attention_resolutions=parse_attention_resolutions(attention_resolutions, image_size),
        dropout=dropout,
        channel_mult=parse_channel_mult(channel_mult, image_size),
        num_classes=NUM_CLASSES if class_cond else None,
        use_checkpoint=use_checkpoint,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
    )


def create_gaussian_diffusion(
    *,
    steps=1000,
    learn_sigma=False,
    sigma_small=False,
    noise_schedule="linear",
    use_kl=False,
    predict_xstart=False,
    rescale_timesteps=False,
    rescale_learned_sigmas=False,
    timestep_respacing="",
    input_pertub=0.0,
    perturb_schedule_type="linear",
    perturb_cutoff=0,
    do_time_shift=False,
    window=2,
    cutoff=300,
    ts_rule="adm",
):
    """A ``SpacedDiffusion`` for these flags (upstream ``create_gaussian_diffusion``).

    The time-shift flags set the diffusion's default ``time_shift`` for the sampling loops.
    """
    betas = get_named_beta_schedule(noise_schedule, steps)
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if not timestep_respacing:
        timestep_respacing = [steps]
    time_shift = TimeShiftConfig(do_time_shift, window, cutoff, ts_rule).to_time_shift()
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, timestep_respacing),
        betas=betas,
        model_mean_type=gd.ModelMeanType.START_X if predict_xstart else gd.ModelMeanType.EPSILON,
        model_var_type=(
            (gd.ModelVarType.FIXED_LARGE if not sigma_small else gd.ModelVarType.FIXED_SMALL)
            if not learn_sigma
            else gd.ModelVarType.LEARNED_RANGE
        ),
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
        input_pertub=input_pertub,
        perturb_schedule_type=perturb_schedule_type,
        perturb_cutoff=perturb_cutoff,
        time_shift=time_shift,
    )


# ------------------------------------------------------------------ classifier and super-resolution
def classifier_defaults():
    """Upstream's noisy-image classifier defaults."""
    return dict(
        image_size=64,
        classifier_use_fp16=False,
        classifier_width=128,
        classifier_depth=2,
        classifier_attention_resolutions="32,16,8",
        classifier_use_scale_shift_norm=True,
        classifier_resblock_updown=True,
        classifier_pool="attention",
    )


def classifier_and_diffusion_defaults():
    res = classifier_defaults()
    res.update({k: v for k, v in model_and_diffusion_defaults().items() if k in _field_names(DiffusionConfig)
                or k in _field_names(TimeShiftConfig)})
    return res


def create_classifier(
    image_size,
    classifier_use_fp16,
    classifier_width,
    classifier_depth,
    classifier_attention_resolutions,
    classifier_use_scale_shift_norm,
    classifier_resblock_updown,
    classifier_pool,
):
    """The ``EncoderUNetModel`` classifier (1000 classes) for these flags."""
    return EncoderUNetModel(
        image_size=image_size,
        in_channels=3,
        model_channels=classifier_width,
        out_channels=NUM_CLASSES,
        num_res_blocks=classifier_depth,
        attention_resolutions=parse_attention_resolutions(classifier_attention_resolutions, image_size),
        channel_mult=parse_channel_mult("", image_size),
        use_fp16=classifier_use_fp16,
        num_head_channels=64,
        use_scale_shift_norm=classifier_use_scale_shift_norm,
        resblock_updown=classifier_resblock_updown,
        pool=classifier_pool,
    )


def create_classifier_and_diffusion(**kwargs):
    clf_keys = set(classifier_defaults())
    classifier = create_classifier(**{k: v for k, v in kwargs.items() if k in clf_keys})
    rest = {k: v for k, v in kwargs.items() if k not in clf_keys}
    _, diff_cfg, ts_cfg = configs_from_kwargs(**rest)
    diffusion = _diffusion_from_configs(diff_cfg, ts_cfg)
    return classifier, diffusion


def sr_model_and_diffusion_defaults():
    res = model_and_diffusion_defaults()
    res["large_size"] = 256
    res["small_size"] = 64
    del res["image_size"]
    return res


def sr_create_model_and_diffusion(large_size, small_size, **kwargs):
    """(SuperResModel, diffusion) for upstream's super-resolution flags."""
    del small_size
    model_cfg, diff_cfg, ts_cfg = configs_from_kwargs(image_size=large_size, **kwargs)
    mk = dataclasses.asdict(model_cfg)
    channels = mk.pop("image_channels")
    if large_size not in (64, 256, 512):
        raise ValueError(f"unsupported large_size {large_size}: use 64, 256 or 512")
    model = SuperResModel(
        image_size=large_size,
        in_channels=channels,
        model_channels=mk["num_channels"],
        out_channels=channels * (2 if mk["learn_sigma"] else 1),
        num_res_blocks=mk["num_res_blocks"],
        attention_resolutions=parse_attention_resolutions(mk["attention_resolutions"], large_size),
        dropout=mk["dropout"],
        channel_mult=(1, 2, 3, 4) if large_size == 64 else (1, 1, 2, 2, 4, 4),
        num_classes=NUM_CLASSES if mk["class_cond"] else None,
        use_checkpoint=mk["use_checkpoint"],
        num_heads=mk["num_heads"],
        num_head_channels=mk["num_head_channels"],
        num_heads_upsample=mk["num_heads_upsample"],
        use_scale_shift_norm=mk["use_scale_shift_norm"],
        resblock_updown=mk["resblock_updown"],
        use_fp16=mk["use_fp16"],
    )
    diffusion = _diffusion_from_configs(diff_cfg, ts_cfg)
    return model, diffusion


# ------------------------------------------------------------------ argparse helpers
def str2bool(v):
    """Upstream's boolean parser: yes/true/t/y/1 or no/false/f/n/0 (any case)."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (True/False), got {v!r}")


def _nonneg_int(v):
    try:
        value = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"integer expected, got {v!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


_ARG_TYPES = {"window": _nonneg_int, "cutoff": _nonneg_int}
_CHOICES = {"ts_rule": TS_RULES, "noise_schedule": ("linear", "cosine")}


def add_dict_to_argparser(parser, default_dict, help=None):
    """Add ``--key value`` flags for every entry (bools parsed with ``str2bool``)."""
    help = {**HELP, **(help or {})}
    for k, v in default_dict.items():
        v_type = type(v)
        if v is None:
            v_type = str
        elif isinstance(v, bool):
            v_type = str2bool
        v_type = _ARG_TYPES.get(k, v_type)
        parser.add_argument(
            f"--{k}",
            default=v,
            type=v_type,
            choices=_CHOICES.get(k),
            help=f"{help.get(k, k.replace('_', ' '))} (default: {v!r})",
        )


def args_to_dict(args, keys):
    """Pick ``keys`` out of an argparse namespace."""
    return {k: getattr(args, k) for k in keys}
