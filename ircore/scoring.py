"""The quality scores the command lines report for a restored image against its reference.

PSNR and SSIM (on RGB, optionally also on the Y channel) always; LPIPS-VGG (v0.1, the papers' perceptual number)
when the ``lpips`` extra is installed (``pip install '.[lpips]'``; :func:`ircore.lpips.load_pretrained`), else
``"lpips": None`` so that a reader sees it was not measured rather than a missing key.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from ircore import images, lpips, metrics

LPIPS_MIN_SIZE = 16  # LPIPS-VGG pools four times


def lpips_params_if_installed() -> Any | None:
    """The released LPIPS weights, or None when the ``lpips`` extra is not installed."""
    try:
        return lpips.load_pretrained()
    except FileNotFoundError:
        return None


class Scorer:
    """``scorer(image, reference) -> {"psnr", "ssim"[, "psnr_y", "ssim_y"], "lpips"}`` for (1, H, W, 3) [-1, 1]
    images of the same shape. LPIPS weights are read once; ``use_lpips=False`` leaves LPIPS out (``None``)."""

    def __init__(self, use_lpips: bool = True):
        self.lpips_params = lpips_params_if_installed() if use_lpips else None
        self._lpips = jax.jit(lpips.lpips_distance)

    @property
    def has_lpips(self) -> bool:
        return self.lpips_params is not None

    def __call__(self, image: Any, reference: Any, *, y_channel: bool = False) -> dict[str, float | None]:
        image = np.clip(np.asarray(image, np.float32), -1.0, 1.0)
        reference = np.asarray(reference, np.float32)
        if image.shape != reference.shape or image.ndim != 4:
            raise ValueError(f"cannot score an image of shape {image.shape} against a reference of shape "
                             f"{reference.shape}: both must be (1, H, W, 3) and equal")
        a, b = images.to_unit(image), images.to_unit(reference)
        out: dict[str, float | None] = {"psnr": float(metrics.psnr(a, b)[0]), "ssim": float(metrics.ssim(a, b)[0])}
        if y_channel:
            out["psnr_y"] = float(metrics.psnr(a, b, y_channel=True)[0])
            out["ssim_y"] = float(metrics.ssim(a, b, y_channel=True)[0])
        out["lpips"] = None
        if self.has_lpips and min(image.shape[1:3]) >= LPIPS_MIN_SIZE:
            out["lpips"] = float(self._lpips(self.lpips_params, image, reference)[0])
        return out
