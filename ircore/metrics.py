"""Full-reference image metrics (PSNR, SSIM) on batches of [0, 1] RGB images, built on dm-pix.

Conventions of the evaluations these numbers are compared with:

* **DeqIR / DDNM** (CelebA-HQ, ImageNet): DeqIR's shipped runner only saves images; DDNM, whose protocol
  DeqIR's tables follow, computes ``PSNR = 10 log10(1 / mse)`` on float RGB images in [0, 1] (after
  ``clamp((x + 1) / 2, 0, 1)``), over the whole image: ``psnr(a, b)`` with the defaults here.
* **ResShift**: PSNR/SSIM are reported on the **Y channel** (pyiqa-style, ResShift issue #41): use
  ``y_channel=True`` (ITU-R BT.601 luma with the 16-235 studio range, as basicsr's ``rgb2ycbcr``), and
  ``crop_border`` for border-cropped protocols.

SSIM is dm-pix's: Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, valid region only, mean over pixels
and channels (the Wang et al. definition, equal to scikit-image's ``structural_similarity`` with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1``).

Inputs are float arrays (B, H, W, C) (or a single (H, W, C) image, treated as B = 1); outputs have shape (B,).
Values are not clipped: convert [-1, 1] model outputs with ``ircore.images.to_unit`` and clip or quantise
as the protocol requires.
"""
from __future__ import annotations

import functools

import dm_pix as pix
import jax
import jax.numpy as jnp

# basicsr / ITU-R BT.601 luma for RGB in [0, 1], output in [16/255, 235/255].
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0


def rgb_to_y(img: jax.Array) -> jax.Array:
    """(..., H, W, 3) RGB in [0, 1] -> (..., H, W, 1) BT.601 luma ``(16 + 65.481 R + 128.553 G + 24.966 B) / 255``."""
    if img.shape[-1] != 3:
        raise ValueError(f"rgb_to_y needs 3 channels in the last axis, got shape {tuple(img.shape)}")
    w = jnp.asarray(_Y_WEIGHTS, dtype=img.dtype)
    return ((img @ w + _Y_OFFSET) / 255.0)[..., None]


def _prepare(a: jax.Array, b: jax.Array, crop_border: int, y_channel: bool) -> tuple[jax.Array, jax.Array]:
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.ndim != 4:
        raise ValueError(f"expected images of shape (B, H, W, C) or (H, W, C), got {tuple(a.shape)}")
    if not (jnp.issubdtype(a.dtype, jnp.floating) and jnp.issubdtype(b.dtype, jnp.floating)):
        raise ValueError(f"expected float images in [0, 1], got dtypes {a.dtype} and {b.dtype}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        h, w = a.shape[1:3]
        if 2 * crop_border >= min(h, w):
            raise ValueError(f"crop_border {crop_border} leaves nothing of a {h}x{w} image")
        a = a[:, crop_border:-crop_border, crop_border:-crop_border]
        b = b[:, crop_border:-crop_border, crop_border:-crop_border]
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    if y_channel:
        a, b = rgb_to_y(a), rgb_to_y(b)
    return a, b


@functools.partial(jax.jit, static_argnames=("crop_border", "y_channel"))
def psnr(a: jax.Array, b: jax.Array, *, crop_border: int = 0, y_channel: bool = False) -> jax.Array:
    """PSNR in dB per image, ``10 log10(1 / mse)`` for [0, 1] images: (B, H, W, C) x2 -> (B,).

    ``crop_border`` pixels are removed from every side first; ``y_channel`` compares BT.601 luma only.
    Identical images give ``inf``.
    """
    a, b = _prepare(a, b, crop_border, y_channel)
    return pix.psnr(a, b)


@functools.partial(jax.jit, static_argnames=("crop_border", "y_channel"))
def ssim(a: jax.Array, b: jax.Array, *, crop_border: int = 0, y_channel: bool = False) -> jax.Array:
    """SSIM per image (Gaussian 11x11, sigma 1.5, data range 1): (B, H, W, C) x2 -> (B,).

    Images must be at least 11x11 after cropping.
    """
    a, b = _prepare(a, b, crop_border, y_channel)
    if min(a.shape[1:3]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {a.shape[1]}x{a.shape[2]}")
    return pix.ssim(a, b, max_val=1.0, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03)
