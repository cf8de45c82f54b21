"""Factories with upstream's names and flat keyword dicts (the compatibility layer).

The settings themselves are declared once in :mod:`guided_diffusion.settings` (``ModelConfig``,
``DiffusionConfig``, ``TimeShiftConfig``, ...). ``model_and_diffusion_defaults()`` merges them into
upstream's flat dict, and ``create_model_and_diffusion(**kw)`` accepts that dict (every key upstream
accepted, including DDPM-IP's ``input_pertub``, ``perturb_schedule_type``, ``perturb_cutoff`` and
TS-DPM's ``do_time_shift``, ``window``, ``cutoff``). New code builds from the configs:
``create_model(**asdict(model_cfg))`` and :func:`diffusion_from_config`.
"""

import dataclasses

import numpy as np

from . import gaussian_diffusion as gd
from .respace import SpacedDiffusion
from .sampler.grids import parse_grid
from .schedules import get_named_beta_schedule
from .settings import (  # noqa: F401  (re-exported: upstream code imports these from script_util)
    MODEL_DIFFUSION_GROUPS,
    DiffusionConfig,
    ModelConfig,
    TimeShiftConfig,
    ClassifierConfig,
    add_argument,
    declared,
    field_names,
    str2bool,
)
from .unet import EncoderUNetModel, SuperResModel, UNetModel

NUM_CLASSES = 1000

DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}


_CONFIGS = MODEL_DIFFUSION_GROUPS

# The model flags of the paper's CIFAR-10 command (TS-DPM-ADM README; ADM-IP checkpoint, 57.1M parameters).
PAPER_CIFAR10_FLAGS = dict(image_size=32, num_channels=128, num_head_channels=32, num_res_blocks=3,
                           attention_resolutions="16,8", resblock_updown=True, use_new_attention_order=True,
                           learn_sigma=True, dropout=0.3, noise_schedule="cosine", use_scale_shift_norm=True)


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
    return tuple(cls(**{k: kwargs[k] for k in field_names(cls) if k in kwargs}) for cls in _CONFIGS)


def create_model_and_diffusion(**kwargs):
    """Build (model, diffusion) from upstream's flat keywords (see ``model_and_diffusion_defaults``)."""
    model_cfg, diff_cfg, ts_cfg = configs_from_kwargs(**kwargs)
    model = create_model(**dataclasses.asdict(model_cfg))
    diffusion = _diffusion_from_configs(diff_cfg, ts_cfg)
    return model, diffusion


def diffusion_from_config(diff_cfg, sigma_small=False):
    """The (respaced) diffusion of a :class:`DiffusionConfig`: schedule tables only, no sampler settings.

    ``sigma_small``: the posterior variance instead of beta_t for a fixed-variance model (set by a
    diffusers folder's ``variance_type fixed_small``; ADM checkpoints keep upstream's beta_t)."""
    return create_gaussian_diffusion(
        steps=diff_cfg.diffusion_steps,
        sigma_small=sigma_small,
        **{k: v for k, v in dataclasses.asdict(diff_cfg).items() if k != "diffusion_steps"},
    )


def _diffusion_from_configs(diff_cfg, ts_cfg):
    """Compatibility: TS-DPM's factory flags become the shift of the upstream-named loop methods."""
    diffusion = diffusion_from_config(diff_cfg)
    diffusion.upstream_time_shift = ts_cfg.to_time_shift()
    return diffusion


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

    The time-shift flags (TS-DPM's API) set ``upstream_time_shift``, the shift that the
    upstream-named loops (``ddim_sample_loop``, ``p_sample_loop``, ...) use when they are not
    given ``time_shift=``. The loop driver itself (:mod:`guided_diffusion.sampler.loop`) only takes
    explicit settings.
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
    grid = parse_grid(timestep_respacing, steps, alphas_cumprod=np.cumprod(1.0 - betas))
    diffusion = SpacedDiffusion(
        use_timesteps=grid.timesteps,
        shift_uses_grid=not grid.upstream,
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
    )
    diffusion.upstream_time_shift = TimeShiftConfig(do_time_shift, window, cutoff, ts_rule).to_time_shift()
    return diffusion


# ------------------------------------------------------------------ classifier and super-resolution
def classifier_defaults():
    """Upstream's noisy-image classifier defaults (plus ours: num_classes, channel_mult, head channels,
    image_channels; their defaults are upstream's fixed values, so official checkpoints load)."""
    res = dict(image_size=64)
    res.update(dataclasses.asdict(ClassifierConfig()))
    res["image_channels"] = 3
    return res


def classifier_and_diffusion_defaults():
    res = classifier_defaults()
    res.update({k: v for k, v in model_and_diffusion_defaults().items() if k in field_names(DiffusionConfig)
                or k in field_names(TimeShiftConfig)})
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
    classifier_num_classes=NUM_CLASSES,
    classifier_channel_mult="",
    classifier_num_head_channels=64,
    image_channels=3,
):
    """The ``EncoderUNetModel`` classifier for these flags (upstream ``create_classifier``).

    Upstream fixed 1000 classes, 3 input channels, the default channel_mult of ``image_size`` and 64
    channels per head; those are the defaults of the last four arguments.
    """
    return EncoderUNetModel(
        image_size=image_size,
        in_channels=image_channels,
        model_channels=classifier_width,
        out_channels=classifier_num_classes,
        num_res_blocks=classifier_depth,
        attention_resolutions=parse_attention_resolutions(classifier_attention_resolutions, image_size),
        channel_mult=parse_channel_mult(classifier_channel_mult, image_size),
        use_fp16=classifier_use_fp16,
        num_head_channels=classifier_num_head_channels,
        use_scale_shift_norm=classifier_use_scale_shift_norm,
        resblock_updown=classifier_resblock_updown,
        pool=classifier_pool,
    )


def classifier_from_configs(clf_cfg, model_cfg):
    """The classifier of a :class:`ClassifierConfig` (image size and channels from a :class:`ModelConfig`)."""
    return create_classifier(image_size=model_cfg.image_size, image_channels=model_cfg.image_channels,
                             **dataclasses.asdict(clf_cfg))


def create_classifier_and_diffusion(**kwargs):
    """(classifier, diffusion) from upstream's flat keywords (``classifier_and_diffusion_defaults``).

    Upstream's TS-DPM-ADM version crashed here (its factory wanted the time-shift arguments that
    ``classifier_and_diffusion_defaults`` did not supply); here every key is optional (defaults:
    ``classifier_and_diffusion_defaults()``).
    """
    clf_kwargs = classifier_defaults()  # missing classifier keys take their defaults too
    clf_keys = set(clf_kwargs)
    clf_kwargs.update({k: v for k, v in kwargs.items() if k in clf_keys})
    classifier = create_classifier(**clf_kwargs)
    rest = {k: v for k, v in kwargs.items() if k not in clf_keys}
    _, diff_cfg, ts_cfg = configs_from_kwargs(**rest)
    diffusion = _diffusion_from_configs(diff_cfg, ts_cfg)
    return classifier, diffusion


# Upstream's channel_mult of the super-resolution model by large_size; other sizes use
# --channel_mult or the UNet's default for that size.
SR_CHANNEL_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}


def sr_model_and_diffusion_defaults():
    res = model_and_diffusion_defaults()
    res["large_size"] = 256
    res["small_size"] = 64
    del res["image_size"]
    return res


def sr_channel_mult(channel_mult, large_size):
    """An explicit ``channel_mult``, else upstream's for ``large_size``, else the UNet default for it."""
    if channel_mult:
        return parse_channel_mult(channel_mult, large_size)
    if large_size in SR_CHANNEL_MULT:
        return SR_CHANNEL_MULT[large_size]
    return parse_channel_mult("", large_size)


def create_sr_model(large_size, small_size, model_cfg):
    """The ``SuperResModel`` for ``large_size`` from a :class:`ModelConfig` (its image_size is ignored)."""
    if small_size >= large_size:
        raise ValueError(f"--small_size ({small_size}) must be smaller than --large_size ({large_size})")
    mk = dataclasses.asdict(model_cfg)
    channels = mk["image_channels"]
    return SuperResModel(
        image_size=large_size,
        in_channels=channels,
        model_channels=mk["num_channels"],
        out_channels=channels * (2 if mk["learn_sigma"] else 1),
        num_res_blocks=mk["num_res_blocks"],
        attention_resolutions=parse_attention_resolutions(mk["attention_resolutions"], large_size),
        dropout=mk["dropout"],
        channel_mult=sr_channel_mult(mk["channel_mult"], large_size),
        num_classes=NUM_CLASSES if mk["class_cond"] else None,
        use_checkpoint=mk["use_checkpoint"],
        num_heads=mk["num_heads"],
        num_head_channels=mk["num_head_channels"],
        num_heads_upsample=mk["num_heads_upsample"],
        use_scale_shift_norm=mk["use_scale_shift_norm"],
        resblock_updown=mk["resblock_updown"],
        use_fp16=mk["use_fp16"],
        use_new_attention_order=mk["use_new_attention_order"],
    )


def model_from_checkpoint(model_cfg, model_path, device, *, data=None, super_res=None):
    """The diffusion model every job runs: built from a :class:`ModelConfig` (a ``SuperResModel``
    when ``super_res`` (a :class:`SuperResConfig`) is given), the checkpoint at ``model_path`` (or its
    bytes ``data``) loaded strictly with ``weights_only=True``, on ``device``, converted to float16
    with ``use_fp16``, in eval mode. A checkpoint that does not fit is a one-line ``CheckpointError``.
    """
    from .checkpoint import load_checkpoint_into

    if super_res is not None:
        model = create_sr_model(super_res.large_size, super_res.small_size, model_cfg)
    else:
        model = create_model(**dataclasses.asdict(model_cfg))
    load_checkpoint_into(model, model_path, data=data, flags=dataclasses.asdict(model_cfg))
    model.to(device)
    if model_cfg.use_fp16:
        model.convert_to_fp16()
    return model.eval()


def sr_create_model_and_diffusion(large_size, small_size, **kwargs):
    """(SuperResModel, diffusion) for upstream's super-resolution flags.

    As upstream, channel_mult follows ``large_size`` (64: 1,2,3,4; 256 and 512: 1,1,2,2,4,4); ours
    also take ``channel_mult``, ``use_new_attention_order`` and ``image_channels`` and other sizes.
    """
    model_cfg, diff_cfg, ts_cfg = configs_from_kwargs(image_size=large_size, **kwargs)
    model = create_sr_model(large_size, small_size, model_cfg)
    diffusion = _diffusion_from_configs(diff_cfg, ts_cfg)
    return model, diffusion


# ------------------------------------------------------------------ argparse helpers (upstream's API)
def add_dict_to_argparser(parser, default_dict, help=None):
    """Add ``--key value`` flags for every entry; declared settings get their parser, choices and help."""
    known = declared(*MODEL_DIFFUSION_GROUPS)
    for k, v in default_dict.items():
        add_argument(parser, k, v, known.get(k), help=(help or {}).get(k))


def args_to_dict(args, keys):
    """Pick ``keys`` out of an argparse namespace."""
    return {k: getattr(args, k) for k in keys}
