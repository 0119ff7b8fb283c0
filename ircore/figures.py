"""Comparison figures a person can read: labelled panels, small images enlarged, a zoomed detail row.

``comparison([("input", lq), ("restored  27.10 dB / 0.812", x0), ("reference", hq)])`` lays the panels out left to
right, each enlarged with nearest-neighbour to a common size of at least ``min_height`` pixels (so a 64x64
result is visible and an LR input keeps its pixels visible), writes each label above its panel (wrapped at its double spaces when wider than the panel), and adds a
second row with the same crop of every panel magnified (the crop where the outputs differ most, marked with a
red box on the first row). Images are NHWC/HWC in [-1, 1]; the figure is (H, W, 3) float32 in [-1, 1], ready for
:func:`ircore.images.write_png`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ircore import images

Panel = tuple[str, Any]
BOX_COLOUR = (220, 30, 30)


def _rgb_uint8(img: Any, label: str) -> np.ndarray:
    arr = np.asarray(img, np.float32)
    arr = arr[0] if arr.ndim == 4 and arr.shape[0] == 1 else arr
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"panel {label!r} must be an RGB image (H, W, 3) or (1, H, W, 3), got {np.shape(img)}")
    return images.to_uint8(arr)


def _enlarge(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of (h, w, 3) uint8 to (height, width, 3) (integer factors stay exact)."""
    rows = (np.arange(height) * arr.shape[0]) // height
    cols = (np.arange(width) * arr.shape[1]) // width
    return arr[rows][:, cols]


def busiest_crop(panels: Sequence[np.ndarray], size: tuple[int, int]) -> tuple[int, int]:
    """Top-left (y, x) of the ``size`` window where same-sized uint8 panels disagree most (largest mean of the
    per-pixel standard deviation across panels); the centre when they agree everywhere."""
    stack = np.stack([p.astype(np.float32) for p in panels])
    spread = stack.std(axis=0).mean(axis=-1)
    h, w = size
    integral = np.pad(spread, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    sums = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
    if not np.any(sums > 0):
        return (spread.shape[0] - h) // 2, (spread.shape[1] - w) // 2
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y), int(x)


def wrap_label(text: str, width: int, font: Any) -> list[str]:
    """``text`` broken at its double spaces (between a label's parts) into lines that fit ``width`` pixels."""
    lines: list[str] = []
    for part in text.split("  "):
        if lines and font.getlength(f"{lines[-1]}  {part}") <= width - 8:
            lines[-1] = f"{lines[-1]}  {part}"
        else:
            lines.append(part)
    return lines or [""]


def _label_strip(lines: list[str], width: int, font: Any, line_h: int, height: int) -> np.ndarray:
    strip = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((4, 2 + i * line_h), line, fill="black", font=font)
    return np.asarray(strip)


def comparison(panels: Sequence[Panel], *, min_height: int = 256, zoom: bool = True, zoom_fraction: float = 0.25,
               gap: int = 6, font_size: int = 14, zoom_on: Sequence[int] | None = None) -> np.ndarray:
    """Labelled side-by-side figure of ``(label, image)`` panels -> (H, W, 3) float32 in [-1, 1].

    The zoomed crop is where the panels ``zoom_on`` (indices; default: all but the first, the degraded input,
    when there are three or more) disagree most.
    """
    if not panels:
        raise ValueError("comparison needs at least one panel")
    if not 0.0 < zoom_fraction <= 1.0:
        raise ValueError(f"zoom_fraction must be in (0, 1], got {zoom_fraction}")
    pixels = [_rgb_uint8(img, label) for label, img in panels]
    big_h = max(p.shape[0] for p in pixels)
    big_w = max(p.shape[1] for p in pixels)
    factor = max(1, -(-min_height // big_h))
    height, width = big_h * factor, big_w * factor
    common = [_enlarge(p, big_h, big_w) for p in pixels]  # every panel on the largest panel's pixel grid
    shown = [_enlarge(p, height, width) for p in common]
    font = ImageFont.load_default(size=font_size)
    wrapped = [wrap_label(label, width, font) for label, _ in panels]
    line_h = font_size + 4
    label_h = line_h * max(len(lines) for lines in wrapped) + 4  # 22 px for one line of 14 px text
    rows = [[_label_strip(lines, width, font, line_h, label_h) for lines in wrapped], shown]
    if zoom and min(big_h, big_w) >= 8:
        crop_h, crop_w = max(4, int(big_h * zoom_fraction)), max(4, int(big_w * zoom_fraction))
        if zoom_on is None:
            zoom_on = range(1, len(common)) if len(common) >= 3 else range(len(common))
        y, x = busiest_crop([common[i] for i in zoom_on], (crop_h, crop_w))
        rows.append([_enlarge(c[y:y + crop_h, x:x + crop_w], height, width) for c in common])
        top, left, bottom, right = y * factor, x * factor, (y + crop_h) * factor - 1, (x + crop_w) * factor - 1
        for panel in shown:  # mark the zoomed region on the full view (a 2-pixel box)
            for t in range(2):
                panel[top + t, left:right + 1] = BOX_COLOUR
                panel[bottom - t, left:right + 1] = BOX_COLOUR
                panel[top:bottom + 1, left + t] = BOX_COLOUR
                panel[top:bottom + 1, right - t] = BOX_COLOUR
    total_w = len(panels) * width + gap * (len(panels) - 1)
    stripes = []
    for row in rows:
        canvas = np.full((row[0].shape[0], total_w, 3), 255, np.uint8)
        for i, tile in enumerate(row):
            canvas[:, i * (width + gap): i * (width + gap) + width] = tile
        stripes.append(canvas)
        stripes.append(np.full((gap, total_w, 3), 255, np.uint8))
    figure = np.concatenate(stripes[:-1], axis=0)
    return images.from_unit(figure.astype(np.float32) / 255.0).astype(np.float32)


def score_label(name: str, scores: dict | None) -> str:
    """``"restored  27.10 dB  SSIM 0.812"`` from a metrics dict with ``psnr`` / ``ssim`` (either may be absent)."""
    parts = [name]
    if scores and scores.get("psnr") is not None:
        parts.append(f"{float(scores['psnr']):.2f} dB")
    if scores and scores.get("ssim") is not None:
        parts.append(f"SSIM {float(scores['ssim']):.3f}")
    if scores and scores.get("lpips") is not None:
        parts.append(f"LPIPS {float(scores['lpips']):.3f}")
    return "  ".join(parts)
