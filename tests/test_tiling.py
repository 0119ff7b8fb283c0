"""Tiled inference: tile layout, blending weights, exactness and seam behaviour."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resshift_jax import tiling


def _rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, size=shape), jnp.float32)


def _conv_edge(t):
    """3x3 box blur with replicate padding (maps constants to themselves)."""
    p = jnp.pad(t, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return sum(p[:, i:i + t.shape[1], j:j + t.shape[2]] for i in range(3) for j in range(3)) / 9.0


def _official_chop(fn, x, pch, stride, sf):
    """NumPy re-statement of ImageSpliterTh: uniform averaging of overlapping tile outputs (NHWC)."""

    def starts(length):
        if length <= pch:
            return [0]
        s = list(range(0, length, stride))
        s = [length - pch if v + pch > length else v for v in s]
        return sorted(set(s), key=s.index)

    b, h, w, _ = x.shape
    res = count = None
    for r in starts(h):
        for c in starts(w):
            out = np.asarray(fn(x[:, r:r + pch, c:c + pch]))
            if res is None:
                res = np.zeros((b, h * sf, w * sf, out.shape[-1]))
                count = np.zeros_like(res)
            res[:, r * sf:(r + pch) * sf, c * sf:(c + pch) * sf] += out
            count[:, r * sf:(r + pch) * sf, c * sf:(c + pch) * sf] += 1
    assert np.all(count > 0)
    return res / count


def test_tile_starts_official_semantics():
    assert tiling.tile_starts(600, 512, 448) == [0, 88]
    assert tiling.tile_starts(1000, 512, 448) == [0, 448, 488]
    assert tiling.tile_starts(512, 512, 448) == [0]
    assert tiling.tile_starts(100, 512, 448) == [0]
    assert tiling.tile_starts(10, 4, 4) == [0, 4, 6]
    with pytest.raises(ValueError, match="stride"):
        tiling.tile_starts(10, 4, 5)
    with pytest.raises(ValueError, match="overlap"):
        tiling.tile_grid(10, 10, 4, 4)


@pytest.mark.parametrize("weighting", ["uniform", "gaussian"])
@pytest.mark.parametrize("hw,tile,overlap,scale", [((19, 27), 8, 3, 1), ((16, 16), 8, 0, 2), ((9, 30), 12, 5, 4)])
def test_weights_sum_to_one_and_cover(weighting, hw, tile, overlap, scale):
    maps, origins = tiling.blend_weights(*hw, tile, overlap, scale, weighting)
    assert maps.shape == (len(origins), hw[0] * scale, hw[1] * scale)
    assert len(origins) > 1
    np.testing.assert_allclose(maps.sum(axis=0), 1.0, rtol=0, atol=1e-12)
    assert np.all((maps > 0).sum(axis=0) >= 1)  # every pixel covered
    assert np.all(maps >= 0)


@pytest.mark.parametrize("weighting", ["uniform", "gaussian"])
def test_single_tile_equals_untiled_exactly(weighting):
    x = _rand((2, 12, 10, 3))

    def fn(t):
        return jnp.tanh(_conv_edge(t) * 3.0) + t * t

    got = tiling.tiled_apply(fn, x, tile_size=16, overlap=4, weighting=weighting)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(fn(x)))
    got_exact = tiling.tiled_apply(fn, x, tile_size=12, overlap=4, weighting=weighting)
    np.testing.assert_array_equal(np.asarray(got_exact), np.asarray(fn(x)))


@pytest.mark.parametrize("weighting", ["uniform", "gaussian"])
def test_constant_image_stays_constant_across_seams(weighting):
    x = jnp.full((1, 23, 31, 3), 0.3, jnp.float32)
    got = jax.jit(lambda a: tiling.tiled_apply(lambda t: 2.0 * _conv_edge(t), a, tile_size=8, overlap=3,
                                               batch_size=2, weighting=weighting))(x)
    assert got.shape == x.shape
    np.testing.assert_allclose(np.asarray(got), 0.6, rtol=0, atol=1e-6)


@pytest.mark.parametrize("weighting", ["uniform", "gaussian"])
def test_pointwise_function_tiles_seamlessly(weighting):
    x = _rand((2, 21, 17, 3), seed=1)
    got = tiling.tiled_apply(lambda t: 2.0 * t, x, tile_size=8, overlap=2, weighting=weighting)
    np.testing.assert_allclose(np.asarray(got), 2.0 * np.asarray(x), rtol=1e-6, atol=1e-6)


def test_upscaling_tile_function():
    x = _rand((1, 13, 22, 2), seed=2)

    def up(t):
        return jnp.repeat(jnp.repeat(t, 3, axis=1), 3, axis=2) - 0.5

    got = tiling.tiled_apply(up, x, tile_size=6, overlap=2, batch_size=3)
    np.testing.assert_allclose(np.asarray(got), np.asarray(up(x)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_matches_official_uniform_averaging(batch_size):
    """A tile-dependent (non-local) function: the result must equal the official chop semantics."""
    x = _rand((2, 20, 27, 4), seed=3)

    def fn(t):  # depends on the whole tile, changes channels and scale
        up = jnp.repeat(jnp.repeat(t[..., :3], 2, axis=1), 2, axis=2)
        return up * jnp.mean(t, axis=(1, 2, 3), keepdims=True) + 0.1 * jnp.sin(up)

    want = _official_chop(fn, np.asarray(x), pch=8, stride=5, sf=2)
    got = jax.jit(lambda a: tiling.tiled_apply(fn, a, tile_size=8, overlap=3, batch_size=batch_size))(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6)


def test_with_index_gives_each_call_its_index():
    x = jnp.zeros((1, 10, 10, 1))
    got = tiling.tiled_apply(lambda t, i: t + i.astype(t.dtype), x, tile_size=4, overlap=0, with_index=True)
    # 10 = tiles at 0, 4, 6 per axis; tile (r, c) is call 3 r + c; pixel (0, 0) only in call 0,
    # pixel (9, 9) only in call 8, pixel (0, 9) only in call 2.
    out = np.asarray(got)[0, :, :, 0]
    assert out[0, 0] == 0 and out[9, 9] == 8 and out[0, 9] == 2 and out[9, 0] == 6


def test_pad_to_multiple_is_torch_reflect():
    x = _rand((1, 13, 21, 3), seed=4)
    got = tiling.pad_image_to_multiple(x, 8)
    want = F.pad(torch.from_numpy(np.array(x).transpose(0, 3, 1, 2).copy()), (0, 3, 0, 3), mode="reflect")
    np.testing.assert_array_equal(np.asarray(got), want.numpy().transpose(0, 2, 3, 1))
    rep = tiling.pad_image_to_multiple(x, 8, mode="replicate")
    np.testing.assert_array_equal(np.asarray(rep)[:, 13:, :21], np.repeat(np.asarray(x)[:, 12:13], 3, axis=1))
    assert tiling.pad_image_to_multiple(x, 1) is x
    with pytest.raises(ValueError, match="pad mode"):
        tiling.pad_image_to_multiple(x, 8, mode="wrap")


def test_with_padding_composes_with_tiling():
    def needs_multiple_of_8(t):
        if t.shape[1] % 8 or t.shape[2] % 8:
            raise AssertionError(f"bad shape {t.shape}")
        return jnp.repeat(jnp.repeat(t, 2, axis=1), 2, axis=2) * 2.0

    x = _rand((1, 13, 30, 3), seed=5)
    wrapped = tiling.with_padding(needs_multiple_of_8, 8)
    out = wrapped(x)
    assert out.shape == (1, 26, 60, 3)
    tiled = tiling.tiled_apply(wrapped, x, tile_size=16, overlap=4)
    np.testing.assert_allclose(np.asarray(tiled), np.asarray(out), rtol=0, atol=1e-6)


def test_bad_tile_function_output():
    x = jnp.zeros((1, 10, 10, 1))
    with pytest.raises(ValueError, match="integer multiple"):
        tiling.tiled_apply(lambda t: t[:, :3, :3], x, tile_size=4, overlap=1)
    with pytest.raises(ValueError, match="weighting"):
        tiling.tiled_apply(lambda t: t, x, tile_size=4, overlap=1, weighting="cosine")
