"""Optional speed-ups for inference: fused attention, autocast, channels_last, torch.compile.

``use_fp16`` (upstream's half-precision trunk) lives on the model itself (``convert_to_fp16``).
Everything here is off by default. Fused attention ("sdpa") equals upstream's float32 attention to
~1e-6 (tested) but was not faster where measured, so "math" stays the default kernel.
"""

import torch

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class AutocastModel(torch.nn.Module):
    """Runs the wrapped model under ``torch.autocast`` and returns float32 outputs."""

    def __init__(self, model, device_type, dtype):
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, x, t, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.model(x, t, **kwargs)
        return out.float()


def apply_fast_path(model, *, device, attention="math", autocast="none", channels_last=False, compile=False):
    """Return a callable ``(x, t, **kw)`` that runs ``model`` with the chosen speed-ups.

    :param attention: "sdpa" (fused scaled_dot_product_attention) or "math" (upstream einsum).
    :param autocast: "none", "bf16" or "fp16": mixed precision for the forward pass.
    :param channels_last: store conv weights (and feed inputs) in NHWC memory format.
    :param compile: wrap the network in ``torch.compile``.
    """
    if autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"--autocast must be one of {sorted(AUTOCAST_DTYPES)}, got {autocast!r}")
    if hasattr(model, "set_attention_impl"):
        model.set_attention_impl(attention)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fn = model
    if AUTOCAST_DTYPES[autocast] is not None:
        fn = AutocastModel(fn, torch.device(device).type, AUTOCAST_DTYPES[autocast])
    if compile:
        fn = torch.compile(fn)
    if channels_last:
        inner = fn

        def fn(x, t, **kwargs):  # noqa: F811 (a thin wrapper is clearer than a class here)
            return inner(x.contiguous(memory_format=torch.channels_last), t, **kwargs)

    return fn
