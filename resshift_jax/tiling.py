"""Tiled ("chopped") inference for images too large for one network call, with overlap blending.

Semantics follow the official ResShift chopping (``ImageSpliterTh`` + ``ResShiftSampler.sample_func``):

* tile starts along an axis of length L: ``0, stride, 2*stride, ...`` (stride = tile_size - overlap), every
  start moved back so its tile ends inside the image (the last tile is aligned to the border), duplicates
  dropped; an axis not longer than ``tile_size`` is one tile of the full length;
* overlapping outputs are **averaged uniformly** (per-pixel counts) in the official code; a Gaussian weighting
  (StableSR-style, sigma = ``gaussian_sigma`` x tile side, centred) is available as an option;
* the official sampler pads each network input with **reflect** padding at the bottom/right to a multiple of
  ``padding_offset`` and crops the output back (:func:`pad_image_to_multiple`, :func:`with_padding`).

Everything is static-shape: tiles are gathered with ``lax.dynamic_slice`` and processed ``batch_size`` tiles
at a time, outputs are accumulated in place and divided by the precomputed weight sum. Arrays are NHWC. Two
drivers, same tiles, same noise indices, same blending:

* :func:`tiled_apply`: one ``lax.scan`` over the calls (the per-tile function is traced once); it can run inside
  ``jax.jit``, so nothing can be reported while it runs;
* :func:`tiled_apply_stepwise`: a Python loop with one call of a (caller-jitted) chunk function per
  ``batch_size`` tiles, and ``on_tile(done, total)`` after each, for a progress bar and a time estimate.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np

TileFn = Callable[..., jax.Array]
OnTile = Callable[[int, int], None]  # on_tile(tiles done, tiles in all)
PAD_MODES = {"reflect": "reflect", "replicate": "edge", "edge": "edge", "symmetric": "symmetric",
             "constant": "constant"}


def pad_image_to_multiple(x: jax.Array, multiple: int, mode: str = "reflect") -> jax.Array:
    """Pads NHWC ``x`` at the bottom/right so H and W become multiples of ``multiple`` (reflect = official)."""
    if x.ndim != 4:
        raise ValueError(f"pad_image_to_multiple expects NHWC (4 dims), got shape {x.shape}")
    if int(multiple) != multiple or multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple!r}")
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {sorted(PAD_MODES)}, got {mode!r}")
    pad_h = -x.shape[1] % multiple
    pad_w = -x.shape[2] % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode=PAD_MODES[mode])


def with_padding(fn: Callable[[jax.Array], jax.Array], multiple: int, mode: str = "reflect") -> Callable:
    """Wraps ``fn`` (NHWC -> NHWC, output an integer multiple s of the input size) to accept any size:
    pad to ``multiple``, apply, crop the output to (H*s, W*s)."""

    def wrapped(x: jax.Array, *args: Any) -> jax.Array:
        height, width = x.shape[1], x.shape[2]
        padded = pad_image_to_multiple(x, multiple, mode)
        out = fn(padded, *args)
        scale = out.shape[1] // padded.shape[1]
        return out[:, : height * scale, : width * scale]

    return wrapped


def tile_starts(length: int, tile_size: int, stride: int) -> list[int]:
    """Start offsets of the tiles along one axis (official ``extract_starts``)."""
    if tile_size < 1 or stride < 1 or stride > tile_size:
        raise ValueError(f"need 1 <= stride <= tile_size, got stride={stride}, tile_size={tile_size}")
    if length <= tile_size:
        return [0]
    starts = [min(s, length - tile_size) for s in range(0, length, stride)]
    return list(dict.fromkeys(starts))


def tile_grid(height: int, width: int, tile_size: int, overlap: int) -> tuple[list[tuple[int, int]], int, int]:
    """Row-major tile origins (h0, w0) and the common tile size (th, tw) = (min(tile, H), min(tile, W))."""
    if not (0 <= overlap < tile_size):
        raise ValueError(f"need 0 <= overlap < tile_size, got overlap={overlap}, tile_size={tile_size}")
    stride = tile_size - overlap
    rows = tile_starts(height, tile_size, stride)
    cols = tile_starts(width, tile_size, stride)
    return [(r, c) for r in rows for c in cols], min(tile_size, height), min(tile_size, width)


def tile_weight(tile_h: int, tile_w: int, weighting: str = "uniform", gaussian_sigma: float = 0.1) -> np.ndarray:
    """(tile_h, tile_w) float64 blending weight of one tile (all ones, or a centred separable Gaussian)."""
    if weighting == "uniform":
        return np.ones((tile_h, tile_w))
    if weighting == "gaussian":
        if gaussian_sigma <= 0:
            raise ValueError(f"gaussian_sigma must be > 0, got {gaussian_sigma}")

        def bump(n: int) -> np.ndarray:
            pos = np.arange(n, dtype=np.float64) - (n - 1) / 2
            return np.exp(-0.5 * (pos / (gaussian_sigma * n)) ** 2)

        return np.outer(bump(tile_h), bump(tile_w))
    raise ValueError(f"weighting must be 'uniform' or 'gaussian', got {weighting!r}")


def blend_weights(
    height: int,
    width: int,
    tile_size: int,
    overlap: int,
    scale: int = 1,
    weighting: str = "uniform",
    gaussian_sigma: float = 0.1,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Normalised per-tile weight maps on the output grid, (n_tiles, H*scale, W*scale) float64, and the origins.

    At every output pixel the maps of the tiles covering it sum to one (zero elsewhere).
    """
    origins, th, tw = tile_grid(height, width, tile_size, overlap)
    w = tile_weight(th * scale, tw * scale, weighting, gaussian_sigma)
    maps = np.zeros((len(origins), height * scale, width * scale))
    for i, (r, c) in enumerate(origins):
        maps[i, r * scale:(r + th) * scale, c * scale:(c + tw) * scale] = w
    total = maps.sum(axis=0)
    if np.any(total <= 0):
        raise ValueError("tiling leaves output pixels uncovered")
    return maps / total, origins


def tile_count(height: int, width: int, tile_size: int, overlap: int) -> int:
    """How many tiles :func:`tile_grid` cuts an image of ``height`` x ``width`` into."""
    return len(tile_grid(height, width, tile_size, overlap)[0])


def _calls(origins: list[tuple[int, int]], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile origins grouped ``batch_size`` per call, (n_calls, batch_size, 2) int32, and which are real tiles
    (n_calls, batch_size) bool: the last call is filled up with repeats of the last tile, weighted 0."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n_calls = -(-len(origins) // batch_size)
    padded = origins + [origins[-1]] * (n_calls * batch_size - len(origins))
    starts = np.array(padded, dtype=np.int32).reshape(n_calls, batch_size, 2)
    valid = (np.arange(n_calls * batch_size) < len(origins)).reshape(n_calls, batch_size)
    return starts, valid


def gather_tiles(x: jax.Array, origins: jax.Array, tile_h: int, tile_w: int) -> jax.Array:
    """The (k*B, tile_h, tile_w, C) tiles of ``x`` (B, H, W, C) at ``origins`` (k, 2), tile-major (traceable)."""
    batch, channels = x.shape[0], x.shape[3]
    return jnp.concatenate(
        [jax.lax.dynamic_slice(x, (0, origins[k, 0], origins[k, 1], 0), (batch, tile_h, tile_w, channels))
         for k in range(origins.shape[0])], axis=0)


def _add_tiles(acc: jax.Array, out: jax.Array, origins: jax.Array, keep: jax.Array, weight: jax.Array,
               scale: int) -> jax.Array:
    """``acc`` plus the weighted tile outputs ``out`` (k*B, th*s, tw*s, C) placed at ``origins`` * scale."""
    batch = acc.shape[0]
    size = (batch, out.shape[1], out.shape[2], out.shape[3])
    for k in range(origins.shape[0]):
        pos = (0, origins[k, 0] * scale, origins[k, 1] * scale, 0)
        contrib = out[k * batch:(k + 1) * batch].astype(acc.dtype) * weight * keep[k].astype(acc.dtype)
        acc = jax.lax.dynamic_update_slice(acc, jax.lax.dynamic_slice(acc, pos, size) + contrib, pos)
    return acc


_add_tiles_jit = jax.jit(_add_tiles, static_argnames=("scale",))


def _weights(height: int, width: int, origins: list[tuple[int, int]], th: int, tw: int, scale: int,
             weighting: str, gaussian_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(one tile's weight (th*s, tw*s), their sum over the output grid (H*s, W*s)), float64."""
    weight = tile_weight(th * scale, tw * scale, weighting, gaussian_sigma)
    total = np.zeros((height * scale, width * scale))
    for r, c in origins:
        total[r * scale:(r + th) * scale, c * scale:(c + tw) * scale] += weight
    return weight, total


def _scale_of(out_shape: tuple[int, ...], n: int, th: int, tw: int) -> int:
    if len(out_shape) != 4 or out_shape[0] != n:
        raise ValueError(f"tile function must return (N, h, w, c) with N = {n}, got {tuple(out_shape)}")
    scale = out_shape[1] // th
    if out_shape[1] != th * scale or out_shape[2] != tw * scale or scale < 1:
        raise ValueError(f"tile output {tuple(out_shape[1:3])} is not an integer multiple of tile ({th}, {tw})")
    return scale


def tiled_apply(
    fn: TileFn,
    x: jax.Array,
    *,
    tile_size: int,
    overlap: int,
    batch_size: int = 1,
    weighting: Literal["uniform", "gaussian"] = "uniform",
    gaussian_sigma: float = 0.1,
    with_index: bool = False,
) -> jax.Array:
    """Applies ``fn`` to overlapping tiles of ``x`` (B,H,W,C) and blends the outputs.

    ``fn(tiles)`` maps (batch_size*B, th, tw, C) -> (batch_size*B, th*s, tw*s, C_out) for an integer s (tiles
    of one call are stacked tile-major: tile k of the call holds rows k*B..(k+1)*B-1). With
    ``with_index=True`` it is called as ``fn(tiles, call_index)`` (an int32 scalar), e.g. to fold a PRNG key
    so that every tile gets its own noise. Returns (B, H*s, W*s, C_out). If one tile covers the image,
    returns ``fn(x)`` exactly. Padding to a network multiple is the caller's job (:func:`with_padding`).
    """
    if x.ndim != 4:
        raise ValueError(f"tiled_apply expects NHWC (4 dims), got shape {x.shape}")
    batch, height, width, channels = x.shape
    origins, th, tw = tile_grid(height, width, tile_size, overlap)
    starts_np, valid_np = _calls(origins, batch_size)
    call = (lambda tiles, i: fn(tiles, i)) if with_index else (lambda tiles, i: fn(tiles))
    if len(origins) == 1:
        return call(x, jnp.int32(0))

    probe = jax.ShapeDtypeStruct((batch_size * batch, th, tw, channels), x.dtype)
    out_struct = jax.eval_shape(call, probe, jax.ShapeDtypeStruct((), jnp.int32))
    scale = _scale_of(out_struct.shape, batch_size * batch, th, tw)
    out_channels = out_struct.shape[3]
    acc_dtype = jnp.promote_types(out_struct.dtype, jnp.float32)
    weight, total = _weights(height, width, origins, th, tw, scale, weighting, gaussian_sigma)
    weight_j = jnp.asarray(weight, acc_dtype)[None, :, :, None]

    def body(acc, xs):
        index, origin, keep = xs
        out = call(gather_tiles(x, origin, th, tw), index)
        return _add_tiles(acc, out, origin, keep, weight_j, scale), None

    init = jnp.zeros((batch, height * scale, width * scale, out_channels), acc_dtype)
    indices = jnp.arange(len(starts_np), dtype=jnp.int32)
    acc, _ = jax.lax.scan(body, init, (indices, jnp.asarray(starts_np), jnp.asarray(valid_np)))
    out = acc / jnp.asarray(total, acc_dtype)[None, :, :, None]
    return out.astype(out_struct.dtype)


def tiled_apply_stepwise(
    run: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    x: jax.Array,
    *,
    tile_size: int,
    overlap: int,
    batch_size: int = 1,
    weighting: Literal["uniform", "gaussian"] = "uniform",
    gaussian_sigma: float = 0.1,
    on_tile: Optional[OnTile] = None,
) -> jax.Array:
    """:func:`tiled_apply` (``with_index=True``) driven from Python, one call per ``batch_size`` tiles.

    ``run(x, origins, call_index)`` returns the outputs (batch_size*B, th*s, tw*s, C) of the tiles of ``x`` at
    ``origins`` ((batch_size, 2) int32; :func:`gather_tiles` cuts them), call ``call_index`` (int32 scalar);
    jit it once (origins and index as arguments), so every call reuses one compiled program. After each call
    the result is waited for and ``on_tile(tiles done, tiles in all)`` is called. Not traceable (it loops in
    Python); call it outside ``jax.jit``. Returns (B, H*s, W*s, C), as :func:`tiled_apply` (also for one tile).
    """
    if x.ndim != 4:
        raise ValueError(f"tiled_apply_stepwise expects NHWC (4 dims), got shape {x.shape}")
    batch, height, width, _ = x.shape
    origins, th, tw = tile_grid(height, width, tile_size, overlap)
    starts, valid = _calls(origins, batch_size)
    acc = total = weight_j = None
    scale = 1
    for index, (origin, keep) in enumerate(zip(starts, valid)):
        out = run(x, jnp.asarray(origin), jnp.int32(index))
        if acc is None:
            scale = _scale_of(out.shape, batch_size * batch, th, tw)
            acc_dtype = jnp.promote_types(out.dtype, jnp.float32)
            weight, total = _weights(height, width, origins, th, tw, scale, weighting, gaussian_sigma)
            weight_j = jnp.asarray(weight, acc_dtype)[None, :, :, None]
            acc = jnp.zeros((batch, height * scale, width * scale, out.shape[3]), acc_dtype)
            out_dtype = out.dtype
        acc = _add_tiles_jit(acc, out, jnp.asarray(origin), jnp.asarray(keep), weight_j, scale=scale)
        if on_tile is not None:
            jax.block_until_ready(acc)
            on_tile(min((index + 1) * batch_size, len(origins)), len(origins))
    out = acc / jnp.asarray(total, acc.dtype)[None, :, :, None]
    return out.astype(out_dtype)
