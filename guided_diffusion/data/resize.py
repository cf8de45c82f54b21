"""Image resizing shared by the data loader and the data-set scripts (PIL + NumPy only, no torch)."""

import numpy as np
from PIL import Image


def crop_center(arr, image_size):
    """The central image_size x image_size window of an (H, W[, C]) array."""
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def center_crop_arr(pil_image, image_size):
    """Upstream guided-diffusion resize: halve with BOX while the shorter side is at least
    2 * image_size, BICUBIC-resize so the shorter side is image_size, crop the centre.
    Returns a uint8 array (H, W) or (H, W, C).
    """
    while min(pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(s // 2 for s in pil_image.size), resample=Image.BOX)
    scale = image_size / min(pil_image.size)
    new_size = tuple(round(s * scale) for s in pil_image.size)
    if new_size != pil_image.size:
        pil_image = pil_image.resize(new_size, resample=Image.BICUBIC)
    return crop_center(np.asarray(pil_image), image_size)
