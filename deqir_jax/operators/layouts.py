"""Measurement and image layouts: this package's NHWC layouts <-> the official flat (B, dim) vectors.

Image-like measurements keep NHWC here (official: channel-major flat vectors); inpainting and Walsh-Hadamard
CS measurements are flat vectors in the official pixel-major interleaved order ``pixel * C + channel``
(the NHWC flattening), so they are identical in both.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from deqir_jax.operators.base import Array, LinearOperator, _lead


def y_to_official_vector(op: LinearOperator, y: Array) -> Array:
    """Measurement in this module's layout (..., *y_shape) -> the official flat vector (..., y_dim)."""
    y = op._check_y(y)
    if op.y_layout == "vector":
        return y
    lead = _lead(y, 3)
    return jnp.moveaxis(y, -1, -3).reshape(lead + (op.y_dim,))


def official_vector_to_y(op: LinearOperator, vec: Array) -> Array:
    """Official flat measurement (..., y_dim) -> this module's layout (..., *y_shape)."""
    vec = jnp.asarray(vec)
    if vec.ndim < 1 or vec.shape[-1] != op.y_dim:
        raise ValueError(f"{op.name}: expected official measurement vectors (..., {op.y_dim}), got {tuple(vec.shape)}")
    if op.y_layout == "vector":
        return vec
    h, w, c = op.y_shape
    return jnp.moveaxis(vec.reshape(_lead(vec, 1) + (c, h, w)), -3, -1)


def image_to_official_vector(x: Array) -> Array:
    """NHWC images (..., H, W, C) -> official flattened NCHW vectors (..., C*H*W)."""
    x = jnp.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"expected images (..., H, W, C), got shape {tuple(x.shape)}")
    return jnp.moveaxis(x, -1, -3).reshape(_lead(x, 3) + (-1,))


def official_vector_to_image(vec: Array, image_shape: Sequence[int]) -> Array:
    """Official flattened NCHW vectors (..., C*H*W) -> NHWC images (..., H, W, C)."""
    vec = jnp.asarray(vec)
    h, w, c = (int(s) for s in image_shape)
    if vec.ndim < 1 or vec.shape[-1] != h * w * c:
        raise ValueError(f"expected vectors (..., {h * w * c}) for images {(h, w, c)}, got {tuple(vec.shape)}")
    return jnp.moveaxis(vec.reshape(_lead(vec, 1) + (c, h, w)), -3, -1)
