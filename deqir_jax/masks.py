"""Inpainting masks (1 = observed, 0 = missing) of shape (H, W), float32.

The official runs read ``experiments/inp_masks/{mask_type}.npy``, which is not shipped; the paper shows
"text" and "stripe" masks on CelebA-HQ. These generators make masks of the same kinds from a seed, and
:func:`load_mask` reads a user's mask image (white = observed).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MASK_KINDS = ("stripes", "box", "random", "text")


def stripes(size: tuple[int, int], period: int = 8, width: int = 4) -> np.ndarray:
    """Horizontal stripes: rows ``r`` with ``r % period < width`` are missing."""
    h, w = size
    rows = (np.arange(h) % period) >= width
    return np.repeat(rows[:, None], w, axis=1).astype(np.float32)


def box(size: tuple[int, int], fraction: float = 0.5) -> np.ndarray:
    """A centred missing box whose sides are ``fraction`` of the image sides."""
    h, w = size
    bh, bw = int(round(h * fraction)), int(round(w * fraction))
    mask = np.ones((h, w), np.float32)
    top, left = (h - bh) // 2, (w - bw) // 2
    mask[top : top + bh, left : left + bw] = 0.0
    return mask


def random_pixels(size: tuple[int, int], missing: float = 0.5, seed: int = 0) -> np.ndarray:
    """Each pixel missing independently with probability ``missing``."""
    rng = np.random.default_rng(seed)
    return (rng.random(size) >= missing).astype(np.float32)


def text(size: tuple[int, int], seed: int = 0, lines: int = 6) -> np.ndarray:
    """Lines of random text drawn over the image (the "text mask" kind)."""
    h, w = size
    rng = np.random.default_rng(seed)
    canvas = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(8, h // (2 * lines)))
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    for i in range(lines):
        line = "".join(rng.choice(letters, size=max(4, w // 6)))
        top = int((i + 0.2) * h / lines)
        draw.text((int(rng.integers(0, max(1, w // 8))), top), line, fill=0, font=font)
    return (np.asarray(canvas) > 127).astype(np.float32)


def make_mask(kind: str, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A generated mask of ``kind`` in :data:`MASK_KINDS`, or a mask image if ``kind`` is a file path."""
    if kind in MASK_KINDS:
        if kind == "stripes":
            return stripes(size)
        if kind == "box":
            return box(size)
        if kind == "random":
            return random_pixels(size, seed=seed)
        return text(size, seed=seed)
    if os.path.isfile(kind):
        return load_mask(kind, size)
    raise ValueError(f"mask {kind!r} is neither a mask kind {MASK_KINDS} nor an existing file")


def load_mask(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Reads a mask image (white = observed, black = missing; threshold at mid-grey) as (H, W) float32."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read mask image {path}: {err}") from err
    if size is not None and arr.shape != tuple(size):
        raise ValueError(f"mask {path} is {arr.shape[0]}x{arr.shape[1]}, the image is {size[0]}x{size[1]}")
    return (arr >= 0.5).astype(np.float32)
