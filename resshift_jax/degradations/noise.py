"""Gaussian and Poisson noise of basicsr (``*_noise_pt``) for one (H, W, 3) image in [0, 1].

Gray noise is one noise map shared by the three channels (Gaussian: an (H, W) normal map; Poisson: shot noise
of the ITU-R 601 luma ``0.2989 R + 0.587 G + 0.114 B``, as torchvision's ``rgb_to_grayscale``).
Poisson noise follows basicsr: the image is rounded to 8 bit, the number of distinct values ``u`` (counted over
the valid region, all channels together; for gray noise over the luma) sets ``vals = 2 ** ceil(log2(u))``,
and ``noise = Poisson(img * vals) / vals - img``; the result is scaled by ``scale``. Outputs are clipped to
[0, 1] (``clip=True, rounds=False`` in the reference).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def gaussian_noise(key: jax.Array, image: jax.Array, sigma, gray) -> jax.Array:
    """image + N(0, (sigma/255)^2), clipped to [0, 1]; ``gray`` (bool, traced ok) uses one map for all channels."""
    draws = jax.random.normal(key, image.shape[:-1] + (image.shape[-1] + 1,), jnp.float32)
    noise = jnp.where(gray, draws[..., -1:], draws[..., :-1]) * (jnp.asarray(sigma, jnp.float32) / 255.0)
    return jnp.clip(image + noise.astype(image.dtype), 0.0, 1.0)


def _round8(x):
    return jnp.clip(jnp.round(x * 255.0), 0.0, 255.0) / 255.0


def _levels_to_vals(image8: jax.Array, weight: jax.Array) -> jax.Array:
    """2 ** ceil(log2(#distinct 8-bit values among pixels with weight > 0)) (image8 holds k/255)."""
    levels = jnp.round(image8 * 255.0).astype(jnp.int32).ravel()
    counts = jnp.zeros(256, jnp.float32).at[levels].add(jnp.broadcast_to(weight, image8.shape).ravel())
    unique = jnp.maximum(jnp.sum(counts > 0), 1)
    return jnp.exp2(jnp.ceil(jnp.log2(unique.astype(jnp.float32))))


def poisson_noise(key: jax.Array, image: jax.Array, scale, gray, valid_hw=None) -> jax.Array:
    """image + scale * shot noise, clipped to [0, 1]. valid_hw restricts the level count to the valid region."""
    h, w, _ = image.shape
    if valid_hw is None:
        weight = jnp.ones((h, w, 1), jnp.float32)
    else:
        rows = jnp.arange(h) < valid_hw[0]
        cols = jnp.arange(w) < valid_hw[1]
        weight = (rows[:, None] & cols[None, :]).astype(jnp.float32)[..., None]
    x = image.astype(jnp.float32)
    color = _round8(x)
    luma = _round8(jnp.sum(x * jnp.asarray(GRAY_WEIGHTS, jnp.float32), axis=-1, keepdims=True))
    # one Poisson draw: gray noise uses channel 0 (carrying the luma) for all channels
    base = jnp.where(gray, jnp.concatenate([luma, color[..., 1:]], axis=-1), color)
    vals_color = _levels_to_vals(color, weight)
    vals = jnp.stack([jnp.where(gray, _levels_to_vals(luma, weight), vals_color), vals_color, vals_color])
    shot = jax.random.poisson(key, base * vals, dtype=jnp.int32).astype(jnp.float32) / vals - base
    noise = jnp.where(gray, shot[..., :1], shot) * jnp.asarray(scale, jnp.float32)
    return jnp.clip(x + noise, 0.0, 1.0).astype(image.dtype)
