"""PyTorch-compatible bicubic and MATLAB-style imresize."""
from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resshift_jax import resize


def _nchw_to_nhwc(a):
    return np.transpose(a, (0, 2, 3, 1))


@pytest.fixture(scope="module")
def ops(load_fixture):
    return load_fixture("resshift/ops_reference")


def _bicubic_keys(ops) -> list[str]:
    keys = sorted((k for k in ops.files if re.fullmatch(r"bicubic/x\d+", k)), key=lambda k: int(k[len("bicubic/x"):]))
    assert keys, "ops_reference holds no bicubic/x<factor> entry"
    return keys


def test_bicubic_matches_fixture(ops):
    x = _nchw_to_nhwc(ops["bicubic/in"])
    for key in _bicubic_keys(ops):
        want = _nchw_to_nhwc(ops[key])
        factor = want.shape[1] / x.shape[1]
        assert factor == want.shape[2] / x.shape[2]
        got = jax.jit(lambda a: resize.interpolate_bicubic(a, scale_factor=factor))(jnp.asarray(x))
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5, err_msg=key)
        # Also through an explicit output size: same result for integer factors.
        got_size = resize.interpolate_bicubic(jnp.asarray(x), size=want.shape[1:3])
        np.testing.assert_allclose(np.asarray(got_size), want, rtol=0, atol=1e-5, err_msg=key)


def test_bicubic_is_not_jax_image_resize(ops):
    """Guards against a silent switch to jax.image.resize, which uses another kernel."""
    x = _nchw_to_nhwc(ops["bicubic/in"])
    want = _nchw_to_nhwc(ops[_bicubic_keys(ops)[-1]])
    other = jax.image.resize(jnp.asarray(x), want.shape, "cubic")
    assert np.max(np.abs(np.asarray(other) - want)) > 1e-3


@pytest.mark.parametrize(
    "shape,kwargs",
    [
        ((2, 7, 9, 3), dict(scale_factor=1.5)),
        ((1, 10, 12, 2), dict(scale_factor=0.5)),
        ((1, 13, 11, 1), dict(scale_factor=0.3)),
        ((1, 5, 6, 3), dict(scale_factor=3.0)),
        ((1, 5, 6, 3), dict(scale_factor=(2.5, 1.75))),
        ((2, 7, 5, 3), dict(size=(11, 13))),
        ((1, 13, 11, 2), dict(size=(4, 6))),
        ((1, 1, 4, 1), dict(size=(3, 9))),
    ],
)
def test_bicubic_matches_torch(shape, kwargs):
    rng = np.random.default_rng(sum(shape))
    x = rng.uniform(-1, 1, size=shape).astype(np.float32)
    tkw = dict(kwargs)
    if isinstance(tkw.get("scale_factor"), tuple):
        tkw["scale_factor"] = tuple(tkw["scale_factor"])
    want = F.interpolate(torch.from_numpy(np.transpose(x, (0, 3, 1, 2))), mode="bicubic",
                         align_corners=False, **tkw).numpy()
    got = resize.interpolate_bicubic(jnp.asarray(x), **kwargs)
    np.testing.assert_allclose(np.asarray(got), _nchw_to_nhwc(want), rtol=0, atol=1e-5)


def test_bicubic_rows_sum_to_one_and_constant_preserved():
    m = resize.torch_bicubic_matrix(5, 17, None)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    x = jnp.full((1, 4, 6, 2), 0.37, jnp.float32)
    np.testing.assert_allclose(np.asarray(resize.interpolate_bicubic(x, scale_factor=4)), 0.37, atol=1e-6)


def test_bicubic_bad_input():
    with pytest.raises(ValueError, match="NHWC"):
        resize.interpolate_bicubic(jnp.zeros((4, 4, 3)), scale_factor=2)
    with pytest.raises(ValueError, match="exactly one"):
        resize.interpolate_bicubic(jnp.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="exactly one"):
        resize.interpolate_bicubic(jnp.zeros((1, 4, 4, 3)), size=8, scale_factor=2)
    with pytest.raises(ValueError, match="scale_factor"):
        resize.interpolate_bicubic(jnp.zeros((1, 4, 4, 3)), scale_factor=-2)


def _matlab_reference(img: np.ndarray, scale: float, antialiasing: bool = True) -> np.ndarray:
    """Direct per-pixel transcription of MATLAB bicubic imresize on (H, W) float64, written without matrices."""

    def kernel(x):
        ax = abs(x)
        if ax <= 1:
            return 1.5 * ax**3 - 2.5 * ax**2 + 1
        if ax <= 2:
            return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
        return 0.0

    def along_rows(a, out_len):
        in_len = a.shape[0]
        width = 4.0 / scale if (scale < 1 and antialiasing) else 4.0
        pad = int(math.ceil(width)) + 4
        padded = np.pad(a, ((pad, pad), (0, 0)), mode="symmetric")
        out = np.zeros((out_len, a.shape[1]))
        for o in range(out_len):
            u = (o + 1) / scale + 0.5 * (1 - 1 / scale)
            first = math.floor(u - width / 2)
            ws, rows = [], []
            for k in range(int(math.ceil(width)) + 2):
                idx = first + k
                d = u - idx
                w = scale * kernel(d * scale) if (scale < 1 and antialiasing) else kernel(d)
                ws.append(w)
                rows.append(padded[idx - 1 + pad])
            ws = np.array(ws) / np.sum(ws)
            out[o] = np.tensordot(ws, np.stack(rows), axes=1)
        del in_len
        return out

    out_h, out_w = math.ceil(img.shape[0] * scale), math.ceil(img.shape[1] * scale)
    tmp = along_rows(img, out_h)
    return along_rows(tmp.T, out_w).T


@pytest.mark.parametrize("scale", [0.25, 1 / 3, 0.5, 0.75, 2.0, 3.0])
def test_imresize_matlab_matches_direct_formula(scale):
    rng = np.random.default_rng(int(scale * 100))
    img = rng.uniform(0, 1, size=(13, 16, 2))
    got = np.asarray(resize.imresize_matlab(jnp.asarray(img[None], jnp.float32), scale))[0]
    for c in range(img.shape[2]):
        want = _matlab_reference(img[:, :, c], scale)
        assert got[:, :, c].shape == want.shape
        np.testing.assert_allclose(got[:, :, c], want, rtol=0, atol=2e-6)


def test_imresize_matlab_known_values():
    # Constant stays constant.
    x = jnp.full((1, 12, 12, 1), 0.25, jnp.float32)
    np.testing.assert_allclose(np.asarray(resize.imresize_matlab(x, 0.25)), 0.25, atol=1e-6)
    # A ramp f(i) = i is reproduced exactly where the kernel support is inside the image: x1/2 output j
    # (0-based) sits at input coordinate 2j + 0.5 and the antialiased kernel spans 8 taps.
    ramp = jnp.broadcast_to(jnp.arange(32, dtype=jnp.float32)[None, :, None, None], (1, 32, 4, 1))
    out = np.asarray(resize.imresize_matlab(ramp, 0.5))[0, :, 0, 0]
    assert out.shape == (16,)
    interior = np.arange(3, 13)
    np.testing.assert_allclose(out[interior], 2 * interior + 0.5, atol=1e-4)
    # Upscaling by 2: output j sits at (j + 0.5) / 2 - 0.5; the sample at j = 2k + 1 ... interior only.
    up = np.asarray(resize.imresize_matlab(ramp, 2.0))[0, :, 0, 0]
    j = np.arange(6, 58)
    np.testing.assert_allclose(up[j], (j + 0.5) / 2 - 0.5, atol=1e-4)
    # Output size is ceil(in * scale).
    assert resize.imresize_matlab(jnp.zeros((1, 10, 7, 3)), 1 / 3).shape == (1, 4, 3, 3)


def test_imresize_matlab_differs_from_torch_bicubic():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (1, 16, 16, 1)), jnp.float32)
    a = resize.imresize_matlab(x, 0.25)
    b = resize.interpolate_bicubic(x, scale_factor=0.25)
    assert a.shape == b.shape
    assert float(jnp.max(jnp.abs(a - b))) > 1e-2


def test_matrices_are_float64_and_jit_grad():
    m = resize.matlab_bicubic_matrix(9, 3, 1 / 3)
    assert m.dtype == np.float64
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    x = jnp.ones((1, 8, 8, 1))
    g = jax.grad(lambda a: jnp.sum(resize.interpolate_bicubic(a, scale_factor=2) ** 2))(x)
    assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))
