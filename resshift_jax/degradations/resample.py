"""Blur and resize of an image whose valid size is a traced value, on a canvas of static shape.

The Real-ESRGAN pipeline resizes by a random continuous factor, so intermediate image sizes differ per sample.
Here an image is a fixed ``(Hc, Wc, C)`` canvas whose top-left ``(n_h, n_w)`` pixels are the image (``n`` may
be a traced int32); the rest is ignored. Each 1-D resize is a per-sample ``(out_canvas, in_canvas)`` matrix
built from the traced sizes, with zero columns beyond ``n_in`` and zero rows beyond ``n_out``, applied as two
einsums. The matrices reproduce PyTorch ``F.interpolate`` (``align_corners=False``, no antialias) exactly:

* ``area`` = ``adaptive_avg_pool``: output i averages inputs ``[floor(i n_in / n_out), ceil((i+1) n_in / n_out))``;
* ``bilinear``: source ``max(step (i + 0.5) - 0.5, 0)``, two taps, right neighbour clamped;
* ``bicubic``: Keys cubic A = -0.75, source ``step (i + 0.5) - 0.5`` (unclamped), taps clamped to the border;

with ``step = 1 / scale_factor`` when torch was called with ``scale_factor`` (and no recompute) and
``n_in / n_out`` when it was called with ``size``. So the random continuous scale is not bucketed or approximated:
only the canvas (the largest possible size) is static. Image edges are handled as in the reference: blur uses
reflect padding (``F.pad(mode='reflect')`` = ``cv2.BORDER_REFLECT_101``) around the valid region, gathered
with traced indices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from resshift_jax.resize import TORCH_CUBIC_A

RESIZE_MODES = ("area", "bilinear", "bicubic")
_HI = jax.lax.Precision.HIGHEST


def reflect_index(index: jax.Array, n: jax.Array) -> jax.Array:
    """Maps any integer index into [0, n) by mirror reflection without repeating the edge (n >= 2)."""
    period = 2 * (n - 1)
    m = jnp.mod(index, period)
    return jnp.where(m < n, m, period - m)


def filter2d_reflect(image: jax.Array, kernel: jax.Array, valid_hw=None) -> jax.Array:
    """Cross-correlate an (H, W, C) canvas with a (k, k) kernel (k odd), reflect-padding the valid region.

    valid_hw: (n_h, n_w) traced sizes of the valid top-left region (default: the whole canvas, n >= 2).
    Equals basicsr ``filter2D`` on the valid region; values outside it are unspecified.
    """
    if image.ndim != 3:
        raise ValueError(f"filter2d_reflect expects one (H, W, C) image, got shape {image.shape}")
    k = kernel.shape[-1]
    if kernel.shape != (k, k) or k % 2 != 1:
        raise ValueError(f"kernel must be square with odd size, got shape {kernel.shape}")
    h, w, c = image.shape
    n_h, n_w = (h, w) if valid_hw is None else valid_hw
    p = k // 2
    rows = reflect_index(jnp.arange(-p, h + p), jnp.asarray(n_h))
    cols = reflect_index(jnp.arange(-p, w + p), jnp.asarray(n_w))
    padded = image[rows][:, cols]
    compute = jnp.promote_types(image.dtype, jnp.float32)
    lhs = jnp.moveaxis(padded.astype(compute), -1, 0)[:, None]  # (C, 1, H+2p, W+2p)
    rhs = kernel.astype(compute)[None, None]  # (1, 1, k, k)
    out = jax.lax.conv_general_dilated(lhs, rhs, (1, 1), "VALID", precision=_HI)
    return jnp.moveaxis(out[:, 0], 0, -1).astype(image.dtype)


def _source(step, out_size: int, clamp_zero: bool) -> jax.Array:
    src = step * (jnp.arange(out_size, dtype=jnp.float32) + 0.5) - 0.5
    return jnp.maximum(src, 0.0) if clamp_zero else src


def _taps_to_matrix(index, weight, in_size: int) -> jax.Array:
    """Sum of one-hot(index) * weight over the tap axis: (out, taps) -> (out, in_size)."""
    onehot = index[..., None] == jnp.arange(in_size)
    return jnp.sum(jnp.where(onehot, weight[..., None], 0.0), axis=1)


def area_matrix(n_in, n_out, in_size: int, out_size: int) -> jax.Array:
    """(out_size, in_size) adaptive average pooling matrix from n_in to n_out valid samples."""
    i = jnp.arange(out_size)
    start = (i * n_in) // n_out
    end = ((i + 1) * n_in + n_out - 1) // n_out
    j = jnp.arange(in_size)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    count = jnp.maximum(end - start, 1).astype(jnp.float32)
    return inside.astype(jnp.float32) / count[:, None]


def bilinear_matrix(n_in, n_out, in_size: int, out_size: int, step) -> jax.Array:
    """(out_size, in_size) torch bilinear (align_corners=False) matrix; ``step`` = source pixels per output."""
    src = _source(step, out_size, clamp_zero=True)
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), n_in - 1)
    lam = src - i0
    i1 = jnp.minimum(i0 + 1, n_in - 1)
    index = jnp.stack([i0, i1], axis=1)
    weight = jnp.stack([1.0 - lam, lam], axis=1)
    return _taps_to_matrix(index, weight, in_size)


def _keys_cubic(x, a: float):
    ax = jnp.abs(x)
    near = ((a + 2) * ax - (a + 3)) * ax * ax + 1
    far = ((a * ax - 5 * a) * ax + 8 * a) * ax - 4 * a
    return jnp.where(ax <= 1, near, jnp.where(ax < 2, far, 0.0))


def bicubic_matrix(n_in, n_out, in_size: int, out_size: int, step) -> jax.Array:
    """(out_size, in_size) torch bicubic (A = -0.75, align_corners=False, border-clamped taps) matrix."""
    src = _source(step, out_size, clamp_zero=False)
    base = jnp.floor(src)
    frac = src - base
    offsets = jnp.arange(-1, 3)
    weight = _keys_cubic(frac[:, None] - offsets[None, :], TORCH_CUBIC_A)
    index = jnp.clip(base.astype(jnp.int32)[:, None] + offsets[None, :], 0, n_in - 1)
    return _taps_to_matrix(index, weight, in_size)


def resize_matrix(mode, n_in, n_out, in_size: int, out_size: int, scale=None, step=None) -> jax.Array:
    """Per-axis torch ``F.interpolate`` matrix (out_size, in_size) for a traced mode index and sizes.

    mode: int (0 area, 1 bilinear, 2 bicubic; may be traced). n_in / n_out: valid input / output sizes.
    scale: the ``scale_factor`` torch was called with (then step = 1 / scale), or None for a ``size`` call
    (step = n_in / n_out). ``step`` (source pixels per output pixel) overrides both. Rows >= n_out are zero.
    """
    n_in = jnp.asarray(n_in, jnp.int32)
    n_out = jnp.asarray(n_out, jnp.int32)
    if step is not None:
        step = jnp.asarray(step, jnp.float32)
    elif scale is None:
        step = n_in.astype(jnp.float32) / n_out.astype(jnp.float32)
    else:
        step = 1.0 / jnp.asarray(scale, jnp.float32)
    mats = jnp.stack([
        area_matrix(n_in, n_out, in_size, out_size),
        bilinear_matrix(n_in, n_out, in_size, out_size, step),
        bicubic_matrix(n_in, n_out, in_size, out_size, step),
    ])
    matrix = mats[jnp.asarray(mode, jnp.int32)]
    row_valid = jnp.arange(out_size) < n_out
    col_valid = jnp.arange(in_size) < n_in
    return jnp.where(row_valid[:, None] & col_valid[None, :], matrix, 0.0)


def resize_valid(
    image: jax.Array, mode, n_in_hw, n_out_hw, out_hw: tuple[int, int], scale=None, step_hw=None
) -> jax.Array:
    """Resize the valid (n_in_h, n_in_w) region of an (H, W, C) canvas to (n_out_h, n_out_w) on an out_hw canvas.

    Same semantics as :func:`resize_matrix` per axis (one ``scale`` for both axes, or None; or explicit
    per-axis ``step_hw``). Returns (out_hw[0], out_hw[1], C), zero outside the valid output region.
    """
    if image.ndim != 3:
        raise ValueError(f"resize_valid expects one (H, W, C) image, got shape {image.shape}")
    h, w, _ = image.shape
    step_h, step_w = (None, None) if step_hw is None else step_hw
    mh = resize_matrix(mode, n_in_hw[0], n_out_hw[0], h, out_hw[0], scale, step_h)
    mw = resize_matrix(mode, n_in_hw[1], n_out_hw[1], w, out_hw[1], scale, step_w)
    compute = jnp.promote_types(image.dtype, jnp.float32)
    x = image.astype(compute)
    x = jnp.einsum("oh,hwc->owc", mh.astype(compute), x, precision=_HI)
    x = jnp.einsum("pw,owc->opc", mw.astype(compute), x, precision=_HI)
    return x.astype(image.dtype)


def valid_mask(shape_hw: tuple[int, int], valid_hw) -> jax.Array:
    """(H, W) bool mask of the valid top-left region."""
    rows = jnp.arange(shape_hw[0]) < valid_hw[0]
    cols = jnp.arange(shape_hw[1]) < valid_hw[1]
    return rows[:, None] & cols[None, :]
