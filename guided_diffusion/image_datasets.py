"""
Image data for training: a folder of images or an ``.npz`` file, as float tensors in [-1, 1].

Sources
-------
* A folder (searched recursively) of ``.jpg``/``.jpeg``/``.png``/``.gif`` files. With
  ``class_cond`` the class of a file is the part of its file name before the first ``"_"``
  (as in upstream guided-diffusion); the class names are sorted and mapped to 0..K-1.
  Each image is converted to RGB (``image_channels=3``) or grey "L" (``image_channels=1``),
  then brought to ``image_size`` x ``image_size`` the upstream way: BOX-downsample by 2 while
  the shorter side is >= 2 * image_size, BICUBIC-resize the shorter side to image_size, then
  crop the centre.
* An ``.npz`` file with ``arr_0`` uint8 of shape (N, H, W, C) with C in {1, 3} or (N, H, W)
  (grey), and optionally ``arr_1`` integer labels of shape (N,) (required for ``class_cond``).
  Grey data is replicated to 3 channels when ``image_channels=3``; RGB data is converted to
  grey (PIL "L", ITU-R 601-2 luma) when ``image_channels=1``. Images whose size is not
  image_size x image_size go through the same resize/centre-crop as folder images.

API
---
``load_data(*, data_dir, batch_size, image_size, class_cond=False, deterministic=False,
random_flip=True, image_channels=3, shard=0, num_shards=1, seed=0)``
    Generator yielding ``(batch, cond)`` forever: ``batch`` float32 (batch_size, C, H, W) in
    [-1, 1]; ``cond`` is ``{"y": LongTensor (batch_size,)}`` with ``class_cond`` else ``{}``.
    It is ``StepBatcher(...).batch(step)`` for step = 0, 1, 2, ...; ``deterministic=True``
    means no shuffling (items in file order), flips stay on when ``random_flip``.

``ImageDataset(source, image_size, *, class_cond=False, image_channels=3)``
    ``source`` is a folder or an ``.npz`` path. ``len(ds)``; ``ds[i]`` -> ``(x, cond)`` with
    ``x`` float32 numpy (C, H, W) in [-1, 1] (never flipped) and ``cond`` ``{"y": np.int64}``
    or ``{}``. ``ds.class_names`` (folder + class_cond) lists the sorted class names.
    ``ds.get_batch(indices)`` -> ``(tensor (B, C, H, W), cond dict of tensors)``.

``StepBatcher(dataset, batch_size, *, seed, shard=0, num_shards=1, random_flip=True,
shuffle=True)``
    Step-addressable, resumable batches: ``batch(step) -> (tensor, cond_dict)`` depends only
    on (dataset, batch_size * num_shards, seed, step, shard), never on what was asked before,
    so resuming at step k gives exactly what continuous iteration gives.
    ``iterate(start_step=0)`` yields ``batch(start_step)``, ``batch(start_step + 1)``, ...
    ``indices(step)`` gives the dataset indices of this rank's batch.

    The item order is one stream made of per-epoch permutations of all N items (epoch e's
    permutation from a ``torch.Generator`` seeded from (seed, e); identity when
    ``shuffle=False``). Global step s takes stream positions [s*G, (s+1)*G) with
    G = batch_size * num_shards; rank ``shard`` takes the slice
    [shard*batch_size, (shard+1)*batch_size) of that. So the ranks' batches at a step are
    disjoint, every item is used once per epoch (no item dropped; a batch may straddle two
    epochs), and the union over ranks equals the single-process batch of size G. Horizontal
    flips come from a generator seeded from (seed, s) (G coin flips, sliced the same way).

``batch_indices(num_items, batch_size, step, seed, shard=0, num_shards=1, shuffle=True)``
    The same index rule as a plain function (a LongTensor of length batch_size).

Sharding is by plain ints (``shard`` = rank, ``num_shards`` = world size); this module does
not import mpi4py or torch.distributed.
"""

import io
import os
import zipfile
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image

from .data.resize import center_crop_arr
from . import io_util
from .io_util import derive_seed

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif")

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "LowResBatcher",
    "StepBatcher",
    "batch_indices",
    "center_crop_arr",
    "list_image_files_recursively",
    "load_data",
]


def load_data(
    *,
    data_dir,
    batch_size,
    image_size,
    class_cond=False,
    deterministic=False,
    random_flip=True,
    image_channels=3,
    shard=0,
    num_shards=1,
    seed=0,
):
    """
    Yield (batch, cond) pairs forever; see the module docstring.

    :param data_dir: a folder of images (recursive) or an .npz file.
    :param batch_size: per-process batch size.
    :param image_size: output height and width.
    :param class_cond: if True, cond has "y" (LongTensor) class labels.
    :param deterministic: if True, items come in file order (no shuffling).
    :param random_flip: random horizontal flips (deterministic given seed and step).
    :param image_channels: 3 for RGB, 1 for grey.
    :param shard: rank of this process; :param num_shards: number of processes.
    :param seed: seed of the shuffling and flips.
    """
    if not data_dir:
        raise ValueError("load_data: data_dir is empty; pass a folder of images or an .npz file")
    dataset = ImageDataset(
        data_dir, image_size, class_cond=class_cond, image_channels=image_channels
    )
    batcher = StepBatcher(
        dataset,
        batch_size,
        seed=seed,
        shard=shard,
        num_shards=num_shards,
        random_flip=random_flip,
        shuffle=not deterministic,
    )
    return batcher.iterate(0)


# ----------------------------------------------------------------------------------------
# Files and images


def list_image_files_recursively(data_dir):
    """Sorted list of image files (by extension, case-insensitive) under data_dir (local or cloud)."""
    results = []
    for root, dirs, files in io_util.walk(data_dir):
        dirs.sort()
        for name in sorted(files):
            ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
            if ext in IMAGE_EXTENSIONS:
                results.append(io_util.join(root, name))
    return sorted(results)


def _pil_mode(image_channels):
    if image_channels == 3:
        return "RGB"
    if image_channels == 1:
        return "L"
    raise ValueError(f"image_channels must be 1 (grey) or 3 (RGB), got {image_channels!r}")


def _to_chw_float(arr):
    """uint8 (H, W) or (H, W, C) -> float32 (C, H, W) in [-1, 1]."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    out = arr.astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(out.transpose(2, 0, 1))


# ----------------------------------------------------------------------------------------
# Dataset


class ImageDataset:
    """
    Images from a folder or an .npz file; ``ds[i]`` -> (float32 (C, H, W) in [-1, 1], cond).
    See the module docstring.
    """

    def __init__(self, source, image_size, *, class_cond=False, image_channels=3):
        self.source = os.fspath(source)
        self.image_size = int(image_size)
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size!r}")
        self.class_cond = bool(class_cond)
        self.image_channels = int(image_channels)
        self.mode = _pil_mode(self.image_channels)
        self.class_names = None
        self._paths = None
        self._array = None
        self._labels = None

        if not io_util.exists(self.source):
            raise FileNotFoundError(
                f"data source {self.source!r} does not exist; pass an existing folder of "
                f"images or an .npz file (see datasets/README.md to build one)"
            )
        if io_util.isdir(self.source):
            self._init_folder()
        elif self.source.lower().endswith(".npz"):
            self._init_npz()
        else:
            raise ValueError(
                f"data source {self.source!r} is neither a folder nor an .npz file; pass a "
                f"folder of {'/'.join(IMAGE_EXTENSIONS)} images or an .npz with arr_0"
            )

    # -- folder
    def _init_folder(self):
        paths = list_image_files_recursively(self.source)
        if not paths:
            raise ValueError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {self.source!r}; "
                f"point data_dir at a folder containing image files"
            )
        self._paths = paths
        if self.class_cond:
            names = []
            for p in paths:
                base = os.path.basename(p)
                if "_" not in base:
                    raise ValueError(
                        f"class_cond needs file names '<class>_<anything>.<ext>', but "
                        f"{p!r} has no '_'; rename the files or set class_cond=False"
                    )
                names.append(base.split("_", 1)[0])
            self.class_names = sorted(set(names))
            index = {name: i for i, name in enumerate(self.class_names)}
            self._labels = np.array([index[n] for n in names], dtype=np.int64)

    # -- npz
    def _init_npz(self):
        # a cloud npz is read into memory (its arrays are held in memory anyway)
        source = io.BytesIO(io_util.read_bytes(self.source)) if io_util.via_blobfile(self.source) else self.source
        if not zipfile.is_zipfile(source):
            raise ValueError(
                f"{self.source!r} is not an .npz (zip) file; rebuild it with a datasets/ "
                f"script or np.savez(path, images_uint8_nhwc[, labels])"
            )
        if isinstance(source, io.BytesIO):
            source.seek(0)
        try:
            with np.load(source, allow_pickle=False) as data:
                keys = set(data.files)
                arr = data["arr_0"] if "arr_0" in keys else None
                labels = data["arr_1"] if "arr_1" in keys else None
        except Exception as exc:  # not a zip / pickled objects / truncated: BadZipFile, ...
            raise ValueError(
                f"cannot read {self.source!r} as an .npz of arrays ({type(exc).__name__}: "
                f"{exc}); rebuild it with a datasets/ script or np.savez"
            ) from exc
        if arr is None:
            raise ValueError(
                f"{self.source!r} has no 'arr_0' (keys: {sorted(keys)}); save the images "
                f"as np.savez(path, images_uint8_nhwc[, labels])"
            )
        if arr.dtype != np.uint8:
            raise ValueError(
                f"{self.source!r}: arr_0 must be uint8 images, got dtype {arr.dtype}; "
                f"convert with arr.astype(np.uint8) after scaling to 0..255"
            )
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] == 3)):
            raise ValueError(
                f"{self.source!r}: arr_0 has shape {arr.shape}; expected (N, H, W, 3), "
                f"(N, H, W, 1) or (N, H, W) (NHWC uint8)"
            )
        if arr.shape[0] == 0:
            raise ValueError(f"{self.source!r}: arr_0 holds no images (N = 0)")
        if labels is not None:
            if labels.shape != (arr.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(
                    f"{self.source!r}: arr_1 (labels) must be integers of shape "
                    f"({arr.shape[0]},), got {labels.dtype} {labels.shape}"
                )
            labels = labels.astype(np.int64)
            if labels.min() < 0:
                raise ValueError(f"{self.source!r}: arr_1 (labels) has negative values")
        if self.class_cond and labels is None:
            raise ValueError(
                f"class_cond=True but {self.source!r} has no 'arr_1' labels; add labels "
                f"(np.savez(path, images, labels)) or set class_cond=False"
            )
        if not self.class_cond:
            labels = None
        self._array = arr
        self._labels = labels

    # -- access
    @property
    def labels(self):
        """int64 (N,) class labels (with ``class_cond``), else None."""
        return self._labels

    def __len__(self):
        if self._paths is not None:
            return len(self._paths)
        return self._array.shape[0]

    def _load_uint8(self, idx):
        s = self.image_size
        if self._paths is not None:
            path = self._paths[idx]
            try:
                with Image.open(io.BytesIO(io_util.read_bytes(path)) if io_util.via_blobfile(path) else path) as img:
                    img.load()
                    img = img.convert(self.mode)
            except Exception as exc:
                raise ValueError(f"cannot read image {path!r}: {exc}") from exc
            return center_crop_arr(img, s)
        arr = self._array[idx]
        want_grey = self.image_channels == 1
        is_grey = arr.ndim == 2
        if arr.shape[0] == s and arr.shape[1] == s and want_grey == is_grey:
            return arr
        img = Image.fromarray(arr).convert(self.mode)
        if img.size == (s, s):
            return np.asarray(img)
        return center_crop_arr(img, s)

    def __getitem__(self, idx):
        idx = int(idx)
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} images")
        x = _to_chw_float(self._load_uint8(idx))
        cond = {}
        if self._labels is not None:
            cond["y"] = np.int64(self._labels[idx])
        return x, cond

    def get_batch(self, indices):
        """(float32 tensor (B, C, H, W) in [-1, 1], {"y": LongTensor} or {}), no flips."""
        indices = [int(i) for i in indices]
        s = self.image_size
        batch = np.empty((len(indices), s, s, self.image_channels), dtype=np.uint8)
        for j, i in enumerate(indices):
            img = self._load_uint8(i)
            batch[j] = img[..., None] if img.ndim == 2 else img
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        x = x.contiguous()
        cond = {}
        if self._labels is not None:
            cond["y"] = torch.from_numpy(self._labels[indices].copy())
        return x, cond


# ----------------------------------------------------------------------------------------
# Step-addressable batches


def _derived_seed(seed, tag, n):
    """A well-mixed 63-bit seed that depends only on (seed, tag, n)."""
    return derive_seed(seed, tag, int(n))


def _epoch_permutation(num_items, seed, epoch, shuffle):
    if not shuffle:
        return torch.arange(num_items, dtype=torch.long)
    gen = torch.Generator()
    gen.manual_seed(_derived_seed(seed, "epoch", epoch))
    return torch.randperm(num_items, generator=gen)


def _check_batch_args(num_items, batch_size, step, shard, num_shards):
    if num_items <= 0:
        raise ValueError("the dataset is empty")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if num_shards <= 0 or not 0 <= shard < num_shards:
        raise ValueError(
            f"need 0 <= shard < num_shards, got shard={shard}, num_shards={num_shards}"
        )


def _global_positions(batch_size, step, shard, num_shards):
    g = batch_size * num_shards
    start = step * g + shard * batch_size
    return torch.arange(start, start + batch_size, dtype=torch.long)


def _indices_from_positions(num_items, positions, perm_fn):
    epochs = positions // num_items
    offsets = positions % num_items
    out = torch.empty_like(positions)
    for e in torch.unique(epochs).tolist():
        mask = epochs == e
        out[mask] = perm_fn(e)[offsets[mask]]
    return out


def batch_indices(num_items, batch_size, step, seed, shard=0, num_shards=1, shuffle=True):
    """Dataset indices (LongTensor (batch_size,)) of rank ``shard``'s batch at ``step``."""
    _check_batch_args(num_items, batch_size, step, shard, num_shards)
    positions = _global_positions(batch_size, step, shard, num_shards)
    return _indices_from_positions(
        num_items, positions, lambda e: _epoch_permutation(num_items, seed, e, shuffle)
    )


class StepBatcher:
    """Deterministic, resumable batches: ``batch(step)`` depends only on (seed, step)."""

    def __init__(
        self,
        dataset,
        batch_size,
        *,
        seed,
        shard=0,
        num_shards=1,
        random_flip=True,
        shuffle=True,
    ):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shard = int(shard)
        self.num_shards = int(num_shards)
        self.random_flip = bool(random_flip)
        self.shuffle = bool(shuffle)
        self.num_items = len(dataset)
        _check_batch_args(self.num_items, self.batch_size, 0, self.shard, self.num_shards)
        self._perm_cache = OrderedDict()

    @property
    def global_batch_size(self):
        return self.batch_size * self.num_shards

    @property
    def steps_per_epoch(self):
        """Global steps per pass over the data (fractional when G does not divide N)."""
        return self.num_items / self.global_batch_size

    def _perm(self, epoch):
        perm = self._perm_cache.get(epoch)
        if perm is None:
            perm = _epoch_permutation(self.num_items, self.seed, epoch, self.shuffle)
            self._perm_cache[epoch] = perm
            while len(self._perm_cache) > 2:
                self._perm_cache.popitem(last=False)
        return perm

    def indices(self, step):
        step = int(step)
        _check_batch_args(self.num_items, self.batch_size, step, self.shard, self.num_shards)
        positions = _global_positions(self.batch_size, step, self.shard, self.num_shards)
        return _indices_from_positions(self.num_items, positions, self._perm)

    def flips(self, step):
        """Bool tensor (batch_size,): which items of this rank's batch are flipped."""
        if not self.random_flip:
            return torch.zeros(self.batch_size, dtype=torch.bool)
        gen = torch.Generator()
        gen.manual_seed(_derived_seed(self.seed, "flip", int(step)))
        coins = torch.rand(self.global_batch_size, generator=gen) < 0.5
        lo = self.shard * self.batch_size
        return coins[lo : lo + self.batch_size]

    def batch(self, step):
        """(float32 tensor (B, C, H, W) in [-1, 1], {"y": LongTensor (B,)} or {})."""
        idx = self.indices(step).tolist()
        if hasattr(self.dataset, "get_batch"):
            x, cond = self.dataset.get_batch(idx)
        else:  # any map-style dataset returning (CHW array, cond dict) like ImageDataset
            items = [self.dataset[i] for i in idx]
            x = torch.stack([torch.as_tensor(np.asarray(a), dtype=torch.float32) for a, _ in items])
            cond = {
                k: torch.as_tensor(np.stack([np.asarray(c[k]) for _, c in items]))
                for k in items[0][1]
            }
        flip = self.flips(step)
        if flip.any():
            x[flip] = x[flip].flip(-1)
        return x, cond

    def iterate(self, start_step=0):
        step = int(start_step)
        while True:
            yield self.batch(step)
            step += 1


class LowResBatcher:
    """Super-resolution training batches: a batcher's (x, cond) plus ``cond["low_res"]``, x downsampled
    to ``small_size`` with area interpolation (upstream ``load_superres_data``).

    Has ``batch(step)``, ``batch_size`` and ``steps_per_epoch`` like :class:`StepBatcher`.
    """

    def __init__(self, batcher, small_size):
        self.batcher = batcher
        self.small_size = int(small_size)
        self.batch_size = batcher.batch_size

    @property
    def steps_per_epoch(self):
        return self.batcher.steps_per_epoch

    def batch(self, step):
        import torch.nn.functional as F

        x, cond = self.batcher.batch(step)
        cond = dict(cond)
        cond["low_res"] = F.interpolate(x, self.small_size, mode="area")
        return x, cond

