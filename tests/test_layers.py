"""Unit tests of the shared ADM layers against plain numpy formulas (NCHW/NCT where the reference is)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ircore import layers


def test_timestep_embedding_is_cos_then_sin():
    t = np.array([0, 1, 17, 500, 999], dtype=np.int32)
    dim = 32
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    args = t[:, None].astype(np.float64) * freqs[None]
    expected = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
    got = np.asarray(layers.timestep_embedding(jnp.asarray(t), dim))
    assert got.dtype == np.float32 and got.shape == (5, dim)
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=0)  # float32 args up to 999 rad
    np.testing.assert_array_equal(got[0], np.r_[np.ones(half), np.zeros(half)])


def test_timestep_embedding_odd_dim_and_float_t():
    t = np.array([0.5, 3.25], dtype=np.float32)
    got = np.asarray(layers.timestep_embedding(jnp.asarray(t), 7, max_period=100.0))
    freqs = np.exp(-math.log(100.0) * np.arange(3) / 3)
    args = t[:, None] * freqs[None]
    expected = np.concatenate([np.cos(args), np.sin(args), np.zeros((2, 1))], axis=-1)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_timestep_embedding_rejects_bad_shape():
    with pytest.raises(ValueError, match="shape"):
        layers.timestep_embedding(jnp.zeros((2, 1)), 8)


def _group_norm_ref(x: np.ndarray, groups: int, eps: float, scale, bias) -> np.ndarray:
    b, h, w, c = x.shape
    g = x.astype(np.float64).reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def test_group_norm32_float32_matches_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 64)).astype(np.float32) * 3 + 1
    module = layers.GroupNorm32()
    scale = rng.normal(size=64).astype(np.float32)
    bias = rng.normal(size=64).astype(np.float32)
    params = {"params": {"scale": scale, "bias": bias}}
    got = np.asarray(module.apply(params, x))
    np.testing.assert_allclose(got, _group_norm_ref(x, 32, 1e-5, scale, bias), atol=1e-5, rtol=1e-5)


def test_group_norm32_bfloat16_input_uses_float32_statistics():
    # Large mean and small spread: bfloat16 statistics would lose most digits of the centred values.
    rng = np.random.default_rng(1)
    x32 = (rng.normal(size=(2, 4, 4, 64)) * 0.5 + 8.0).astype(np.float32)
    x_bf16 = jnp.asarray(x32, dtype=jnp.bfloat16)
    module = layers.GroupNorm32(dtype=jnp.bfloat16)
    params = module.init(jax.random.PRNGKey(0), x_bf16)
    assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32
    got = module.apply(params, x_bf16)
    assert got.dtype == jnp.bfloat16
    expected = _group_norm_ref(np.asarray(x_bf16.astype(jnp.float32)), 32, 1e-5, 1.0, 0.0)
    # Only the final rounding to bfloat16 (relative 2**-8) is allowed.
    np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), expected, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("shape, offset, spread", [((3, 16, 8, 128), 8.0, 0.01), ((2, 33, 96), -3.0, 5.0),
                                                   ((1, 4, 4, 4, 64), 0.0, 1.0)])
def test_group_norm_equals_float64_reference(shape, offset, spread):
    # Channel-minor sums and the fused multiply-add must equal the textbook per-group formula (float64) on random
    # inputs: any rank (B, ..., C), a large mean against a small spread (where one-pass variance would fail).
    rng = np.random.default_rng(4)
    x = (rng.normal(size=shape) * spread + offset).astype(np.float32)
    c = shape[-1]
    scale, bias = rng.normal(size=c).astype(np.float32), rng.normal(size=c).astype(np.float32)
    got = np.asarray(layers.group_norm(jnp.asarray(x), 32, jnp.asarray(scale), jnp.asarray(bias), 1e-6))
    g = x.astype(np.float64).reshape(shape[0], -1, 32, c // 32)
    mean, var = g.mean(axis=(1, 3), keepdims=True), g.var(axis=(1, 3), keepdims=True)
    expected = ((g - mean) / np.sqrt(var + 1e-6)).reshape(shape) * scale + bias
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_allclose(got, expected, atol=5e-4 if spread < 0.1 else 2e-5, rtol=1e-5)  # x itself carries 8 * 2**-24 / 0.01


def test_group_norm32_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="not divisible"):
        layers.GroupNorm32().init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 48)))


def test_upsample_nearest_and_conv():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    got = np.asarray(layers.upsample_nearest2x(jnp.asarray(x)))
    np.testing.assert_array_equal(got, np.repeat(np.repeat(x, 2, axis=1), 2, axis=2))
    module = layers.Upsample(use_conv=True, out_channels=6)
    params = module.init(jax.random.PRNGKey(0), x)
    assert params["params"]["conv"]["kernel"].shape == (3, 3, 4, 6)
    assert module.apply(params, x).shape == (2, 6, 10, 6)


def _conv_ref(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Plain cross-correlation, NHWC input and HWIO kernel, symmetric zero padding."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j] = np.einsum("bhwi,hwio->bo", patch, kernel)
    return out + bias


@pytest.mark.parametrize("size", [8, 7])
def test_downsample_conv_pads_symmetrically(size):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, size, size, 4)).astype(np.float32)
    module = layers.Downsample(use_conv=True, out_channels=5)
    params = module.init(jax.random.PRNGKey(0), x)
    kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    params = {"params": {"op": {"kernel": kernel, "bias": bias}}}
    got = np.asarray(module.apply(params, x))
    expected = _conv_ref(x, kernel, bias, stride=2, pad=1)
    assert got.shape == expected.shape == (2, (size + 1) // 2, (size + 1) // 2, 5)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5)


def test_downsample_avg_pool():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 6, 4, 3)).astype(np.float32)
    module = layers.Downsample(use_conv=False)
    assert module.init(jax.random.PRNGKey(0), x) == {}
    got = np.asarray(module.apply({}, x))
    np.testing.assert_allclose(got, x.reshape(1, 3, 2, 2, 2, 3).mean(axis=(2, 4)), atol=1e-6)


def _attention_ref_nct(qkv: np.ndarray, heads: int, legacy: bool) -> np.ndarray:
    """guided-diffusion QKVAttention(Legacy) on (B, 3*H*C, T) in float64, written from its docstrings."""
    b, width, t = qkv.shape
    ch = width // (3 * heads)
    if legacy:
        q, k, v = np.split(qkv.reshape(b * heads, 3 * ch, t), 3, axis=1)
    else:
        q, k, v = (part.reshape(b * heads, ch, t) for part in np.split(qkv, 3, axis=1))
    w = np.einsum("bct,bcs->bts", q, k) / math.sqrt(ch)
    w = np.exp(w - w.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bts,bcs->bct", w, v).reshape(b, heads * ch, t)


@pytest.mark.parametrize("legacy", [True, False])
def test_qkv_attention_orders(legacy):
    rng = np.random.default_rng(5)
    b, t, heads, ch = 2, 6, 3, 4
    qkv_nct = rng.normal(size=(b, 3 * heads * ch, t)).astype(np.float32)
    got = layers.qkv_attention(jnp.asarray(qkv_nct.transpose(0, 2, 1)), heads, legacy_order=legacy)
    expected = _attention_ref_nct(qkv_nct.astype(np.float64), heads, legacy).transpose(0, 2, 1)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=1e-5)


def test_attention_orders_differ():
    qkv = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 3 * 2 * 4))
    a = layers.qkv_attention(qkv, 2, legacy_order=True)
    b = layers.qkv_attention(qkv, 2, legacy_order=False)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-2


def test_resblock_shapes_and_names():
    x = jnp.zeros((2, 8, 8, 32))
    emb = jnp.zeros((2, 16))
    block = layers.ResBlock(out_channels=64, use_scale_shift_norm=True, down=True)
    params = block.init(jax.random.PRNGKey(0), x, emb)["params"]
    assert set(params) == {"in_layers_0", "in_layers_2", "emb_layers_1", "out_layers_0", "out_layers_3",
                           "skip_connection"}
    assert params["emb_layers_1"]["kernel"].shape == (16, 128)
    assert params["skip_connection"]["kernel"].shape == (1, 1, 32, 64)
    assert block.apply({"params": params}, x, emb).shape == (2, 4, 4, 64)
    up = layers.ResBlock(up=True)
    params = up.init(jax.random.PRNGKey(0), x, emb)["params"]
    assert "skip_connection" not in params and params["emb_layers_1"]["kernel"].shape == (16, 32)
    assert up.apply({"params": params}, x, emb).shape == (2, 16, 16, 32)


def _softmax_attention_ref(q, k, v, scale, bias):
    """float64 numpy reference: softmax(scale * q k^T + bias) v, (B, T, heads, d) layout."""
    logits = np.einsum("bthd,bshd->bhts", q, k) * scale + (0.0 if bias is None else bias)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", weights, v)


@pytest.mark.parametrize("with_bias", [False, True])
def test_dot_product_attention_equals_explicit_softmax(with_bias):
    rng = np.random.default_rng(11)
    b, t, s, heads, d = 3, 7, 5, 2, 8
    q, k, v = (rng.normal(size=(b, n, heads, d)).astype(np.float32) for n in (t, s, s))
    bias = rng.normal(size=(b, heads, t, s)).astype(np.float32) * 3 if with_bias else None
    got = layers.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), scale=0.3,
                                       bias=None if bias is None else jnp.asarray(bias))
    expected = _softmax_attention_ref(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), 0.3,
                                      None if bias is None else bias.astype(np.float64))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=1e-5)
    half = layers.dot_product_attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)), scale=0.3,
                                        bias=None if bias is None else jnp.asarray(bias))
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), expected, atol=0.05)


@pytest.mark.parametrize("batch, tokens, heads", [(1, 64, 1), (2, 300, 1), (2, 300, 3), (1, 600, 2)])
def test_cpu_attention_equals_explicit_softmax(batch, tokens, heads):
    # Attention without bias takes the plain-matmul CPU path (heads first; one head at a time above
    # PER_HEAD_LOGITS logits, as the last case): the same numbers as the explicit softmax and as jax.nn.
    assert 600 * 600 > layers.PER_HEAD_LOGITS >= 300 * 300
    rng = np.random.default_rng(12)
    q, k, v = (rng.normal(size=(batch, tokens, heads, 32)).astype(np.float32) for _ in range(3))
    got = layers.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), scale=32 ** -0.5)
    expected = _softmax_attention_ref(*(a.astype(np.float64) for a in (q, k, v)), 32 ** -0.5, None)
    assert got.shape == q.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=1e-5)
    via_library = jax.nn.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), scale=32 ** -0.5)
    np.testing.assert_allclose(np.asarray(got), np.asarray(via_library), atol=2e-6, rtol=1e-5)
    grads = jax.grad(lambda a: layers.dot_product_attention(a, jnp.asarray(k), jnp.asarray(v), scale=0.2).sum())(
        jnp.asarray(q))
    grads_ref = jax.grad(lambda a: jax.nn.dot_product_attention(a, jnp.asarray(k), jnp.asarray(v), scale=0.2).sum())(
        jnp.asarray(q))
    np.testing.assert_allclose(np.asarray(grads), np.asarray(grads_ref), atol=1e-5, rtol=1e-4)


def test_attention_implementation_choice():
    # CPU (the test platform) and float32 always take XLA's path; cuDNN only for 16-bit inputs on a GPU.
    assert layers.attention_implementation(jnp.float32, 64) == "xla"
    expected_half = "cudnn" if jax.default_backend() == "gpu" else "xla"
    assert layers.attention_implementation(jnp.bfloat16, 64) == expected_half
    assert layers.attention_implementation(jnp.bfloat16, 12) == "xla"
    with pytest.raises(ValueError, match="heads, head_dim"):
        layers.dot_product_attention(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)), scale=1.0)
