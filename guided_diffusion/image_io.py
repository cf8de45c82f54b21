"""Image outputs: PNG grids of samples and the with/without-time-shift comparison figure."""

import numpy as np

from .io_util import save_png_atomic


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
