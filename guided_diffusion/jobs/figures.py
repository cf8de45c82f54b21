"""Image outputs: PNG grids of samples and the with/without-time-shift comparison figure."""

import numpy as np

from ..io_util import save_png_atomic


def grid_array(images, nrow=None):
    """(N, H, W, C) uint8 -> one (rows*(H+2)+2, nrow*(W+2)+2, C) grid image with 2-pixel gaps."""
    n, h, w, c = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    grid = np.zeros((ncol * (h + 2) + 2, nrow * (w + 2) + 2, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + q * (w + 2) : 2 + q * (w + 2) + w] = images[k]
    return grid


def save_grid_png(path, images, nrow=None):
    """A PNG grid of (N, H, W, 3) uint8 images, written atomically."""
    save_png_atomic(path, grid_array(images, nrow))


def class_rows(images, labels, per_class, num_classes=None):
    """One row per class: the first ``per_class`` images labelled with it, in label order.

    :param images: (N, H, W, C) uint8.
    :param labels: (N,) integer labels in [0, num_classes).
    :return: (num_classes * per_class, H, W, C) uint8; a class with fewer than ``per_class`` images
        has its row padded with black images (so rows stay aligned with classes).
    """
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    out = np.zeros((num_classes * per_class,) + images.shape[1:], dtype=np.uint8)
    for c in range(num_classes):
        picked = images[labels == c][:per_class]
        out[c * per_class : c * per_class + len(picked)] = picked
    return out


def save_comparison_png(path, left, right, titles, min_width=800):
    """Two grids side by side with a title above each, scaled up to at least ``min_width`` pixels.

    :param left, right: (N, H, W, 3) uint8 images (same N and size).
    :param titles: (left title, right title).
    """
    from PIL import Image, ImageDraw

    panels = [grid_array(left), grid_array(right)]
    h, w, _ = panels[0].shape
    canvas = np.full((h + 16, 2 * w + 8, 3), 255, dtype=np.uint8)
    canvas[16:, :w] = panels[0]
    canvas[16:, w + 8 :] = panels[1]
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    draw.text((2, 2), titles[0], fill=(0, 0, 0))
    draw.text((w + 10, 2), titles[1], fill=(0, 0, 0))
    scale = max(1, -(-min_width // img.width))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    save_png_atomic(path, img)
