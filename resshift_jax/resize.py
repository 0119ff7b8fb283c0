"""Bicubic resizing that reproduces two reference implementations exactly, as separable matrices.

* :func:`interpolate_bicubic` = PyTorch ``F.interpolate(mode='bicubic', align_corners=False,
  antialias=False)``: Keys cubic with A = -0.75, half-pixel centres, neighbour indices clamped to the border.
  ``jax.image.resize(..., 'cubic')`` differs (A = -0.5, edge re-normalisation) and must not be used where the
  reference used torch (ResShift up-samples the LQ image with it before encoding).
* :func:`imresize_matlab` = MATLAB ``imresize(..., 'bicubic')`` as ported by basicsr
  (``matlab_functions.imresize``): Keys cubic with a = -0.5, kernel widened by 1/scale when down-scaling
  (antialiasing), rows normalised to sum 1, symmetric (edge-including) mirroring at the borders. ResShift's
  bicubic-SR data (``BicubicFromSource``) is made with it.

Both build small (out, in) float64 weight matrices in NumPy from static shapes and apply them with one
einsum per axis, so they are jit-able and differentiable. Images are NHWC (any float dtype).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

TORCH_CUBIC_A = -0.75
MATLAB_CUBIC_A = -0.5


def keys_cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter ``a`` (support [-2, 2])."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    near = ((a + 2) * ax - (a + 3)) * ax * ax + 1
    far = ((a * ax - 5 * a) * ax + 8 * a) * ax - 4 * a
    return np.where(ax <= 1, near, np.where(ax < 2, far, 0.0))


def torch_bicubic_matrix(in_size: int, out_size: int, scale_factor: float | None = None) -> np.ndarray:
    """(out_size, in_size) float64 matrix of torch's 1-D bicubic interpolation (align_corners=False).

    ``scale_factor`` is the user's factor when torch was given one (source step = 1/scale_factor);
    otherwise the step is in_size / out_size.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got in_size={in_size}, out_size={out_size}")
    step = (1.0 / scale_factor) if (scale_factor is not None and scale_factor > 0) else in_size / out_size
    src = step * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5
    base = np.minimum(np.floor(src), in_size - 1)
    frac = np.clip(src - base, 0.0, 1.0)
    # Taps at base-1 .. base+2 with distances frac+1, frac, 1-frac, 2-frac.
    offsets = np.arange(-1, 3)
    weights = keys_cubic(frac[:, None] - offsets[None, :], TORCH_CUBIC_A)
    index = np.clip(base[:, None].astype(np.int64) + offsets[None, :], 0, in_size - 1)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(out_size), 4), index.ravel()), weights.ravel())
    return matrix


def matlab_bicubic_matrix(in_size: int, out_size: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """(out_size, in_size) float64 matrix of MATLAB/basicsr bicubic ``imresize`` along one axis."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got in_size={in_size}, out_size={out_size}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    width = 4.0
    shrink = scale < 1 and antialiasing
    if shrink:
        width = width / scale
    out_pos = np.arange(1, out_size + 1, dtype=np.float64)
    centre = out_pos / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate
    left = np.floor(centre - width / 2)
    taps = int(math.ceil(width)) + 2
    index = left[:, None] + np.arange(taps)[None, :]  # 1-based, may fall outside [1, in_size]
    dist = centre[:, None] - index
    weights = scale * keys_cubic(dist * scale, MATLAB_CUBIC_A) if shrink else keys_cubic(dist, MATLAB_CUBIC_A)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Symmetric mirroring including the edge sample: 0 -> 1, -1 -> 2, in+1 -> in, ... (then 0-based).
    zero_based = index.astype(np.int64) - 1
    period = 2 * in_size
    folded = np.mod(zero_based, period)
    folded = np.where(folded >= in_size, period - 1 - folded, folded)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(out_size), taps), folded.ravel()), weights.ravel())
    return matrix


def _pair(value, name: str) -> tuple:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a number or a pair, got {value!r}")
        return tuple(value)
    return (value, value)


def apply_separable(x: jax.Array, matrix_h: np.ndarray, matrix_w: np.ndarray) -> jax.Array:
    """out[b,o,p,c] = sum_{h,w} Mh[o,h] x[b,h,w,c] Mw[p,w] for NHWC ``x``; computed in float32 or wider."""
    if x.ndim != 4:
        raise ValueError(f"expected an NHWC image batch (4 dims), got shape {x.shape}")
    if matrix_h.shape[1] != x.shape[1] or matrix_w.shape[1] != x.shape[2]:
        raise ValueError(
            f"resize matrices {matrix_h.shape}, {matrix_w.shape} do not fit image of shape {x.shape}"
        )
    compute = jnp.promote_types(x.dtype, jnp.float32)
    xc = x.astype(compute)
    hi = jax.lax.Precision.HIGHEST
    y = jnp.einsum("oh,bhwc->bowc", jnp.asarray(matrix_h, compute), xc, precision=hi)
    y = jnp.einsum("pw,bowc->bopc", jnp.asarray(matrix_w, compute), y, precision=hi)
    return y.astype(x.dtype)


def interpolate_bicubic(
    x: jax.Array,
    size: int | Sequence[int] | None = None,
    scale_factor: float | Sequence[float] | None = None,
    recompute_scale_factor: bool = False,
) -> jax.Array:
    """PyTorch ``F.interpolate(x, size, scale_factor, mode='bicubic', align_corners=False)`` on NHWC.

    x: (B, H, W, C) float. Give exactly one of ``size`` ((H', W') or int) and ``scale_factor``
    (float or pair; output = floor(H * s)). Returns (B, H', W', C) in x.dtype. No clamping of the result
    (torch does not clamp float images either).
    """
    if x.ndim != 4:
        raise ValueError(f"interpolate_bicubic expects NHWC (4 dims), got shape {x.shape}")
    if (size is None) == (scale_factor is None):
        raise ValueError("give exactly one of size and scale_factor")
    in_h, in_w = int(x.shape[1]), int(x.shape[2])
    if size is not None:
        out_h, out_w = (int(v) for v in _pair(size, "size"))
        scales = (None, None)
    else:
        sh, sw = (float(v) for v in _pair(scale_factor, "scale_factor"))
        if sh <= 0 or sw <= 0:
            raise ValueError(f"scale_factor must be > 0, got {scale_factor!r}")
        out_h, out_w = int(math.floor(in_h * sh)), int(math.floor(in_w * sw))
        scales = (None, None) if recompute_scale_factor else (sh, sw)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output size ({out_h}, {out_w}) is empty for input of shape {x.shape}")
    mh = torch_bicubic_matrix(in_h, out_h, scales[0])
    mw = torch_bicubic_matrix(in_w, out_w, scales[1])
    return apply_separable(x, mh, mw)


def imresize_matlab(x: jax.Array, scale: float, antialiasing: bool = True) -> jax.Array:
    """MATLAB-style bicubic ``imresize(x, scale)`` (basicsr port) on NHWC; output ceil(H*scale) x ceil(W*scale).

    x: (B, H, W, C) float (any range; the operation is linear). No rounding or clamping.
    """
    if x.ndim != 4:
        raise ValueError(f"imresize_matlab expects NHWC (4 dims), got shape {x.shape}")
    scale = float(scale)
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    in_h, in_w = int(x.shape[1]), int(x.shape[2])
    out_h, out_w = int(math.ceil(in_h * scale)), int(math.ceil(in_w * scale))
    mh = matlab_bicubic_matrix(in_h, out_h, scale, antialiasing)
    mw = matlab_bicubic_matrix(in_w, out_w, scale, antialiasing)
    return apply_separable(x, mh, mw)
