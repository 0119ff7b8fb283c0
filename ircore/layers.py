"""Building blocks of the guided-diffusion (ADM) UNet family, in Flax linen, NHWC.

Shared by the DeqIR ADM UNet (``deqir_jax.models.adm``) and the ResShift Swin-UNet. Semantics follow
openai/guided-diffusion (``nn.py`` / ``unet.py``); the code is written from scratch for JAX.

Dtypes: every module has ``dtype`` (the compute dtype of its activations) and ``param_dtype`` (float32).
GroupNorm statistics and the attention softmax are always computed in float32.

Submodule names mirror the PyTorch attribute names with ``.N`` list indices joined by ``_`` so that a model's
``torch_key_to_path`` is a plain string rule:

============================  ==========================================  ============================
module                        Flax submodules                              PyTorch names
============================  ==========================================  ============================
:class:`ResBlock`             ``in_layers_0`` (GroupNorm32)               ``in_layers.0``
                              ``in_layers_2`` (3x3 conv)                  ``in_layers.2``
                              ``emb_layers_1`` (Dense)                    ``emb_layers.1``
                              ``out_layers_0`` (GroupNorm32)              ``out_layers.0``
                              ``out_layers_3`` (3x3 conv, zero init)      ``out_layers.3``
                              ``skip_connection`` (1x1 or 3x3 conv)       ``skip_connection``
:class:`AttentionBlock`       ``norm`` (GroupNorm32), ``qkv`` (Dense),    ``norm``, ``qkv``,
                              ``proj_out`` (Dense, zero init)             ``proj_out`` (Conv1d k=1)
:class:`Downsample`           ``op`` (3x3 stride-2 conv; none if pool)    ``op``
:class:`Upsample`             ``conv`` (3x3 conv; none without conv)      ``conv``
:class:`GroupNorm32`          leaves ``scale``, ``bias``                  ``weight``, ``bias``
============================  ==========================================  ============================

Parameter leaves: conv / Dense ``kernel`` + ``bias`` (PyTorch ``weight`` + ``bias``), norms ``scale`` + ``bias``.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Dtype = Any
Initializer = Any

PAD_SAME_3X3 = ((1, 1), (1, 1))


def zero_init() -> Initializer:
    """Initializer for the zero-initialised output layers of ADM (``zero_module`` in guided-diffusion).

    Only an init detail: converted checkpoints overwrite these parameters.
    """
    return nn.initializers.zeros_init()


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal timestep embedding, guided-diffusion order ``[cos, sin]``.

    Args:
      t: (B,) timesteps, integer or float (raw indices, no rescaling).
      dim: embedding width; an odd ``dim`` gets one zero column at the end.
      max_period: controls the lowest frequency.

    Returns:
      (B, dim) float32 with ``freqs[k] = exp(-ln(max_period) * k / (dim // 2))``.
    """
    t = jnp.asarray(t)
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects timesteps of shape (B,), got {t.shape}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def group_norm(x: jax.Array, num_groups: int, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """GroupNorm of channels-last ``x`` (B, ..., C) in float32: statistics per (batch, group) over every other axis.

    Laid out for the CPU and accelerators alike: both reductions run over the spatial axes with the channels
    minor (per-channel sums, then a (C,) -> (groups,) sum), the variance is two-pass (sum of squared deviations
    from the mean, as accurate as PyTorch's), and normalisation and affine are one multiply-add per element
    with per-(batch, channel) coefficients. Returns float32 (B, ..., C).
    """
    b, channels = x.shape[0], x.shape[-1]
    per_group = channels // num_groups
    xf = x.astype(jnp.float32).reshape(b, -1, channels)  # (B, N, C)
    count = xf.shape[1] * per_group

    def group_mean(per_channel: jax.Array) -> jax.Array:  # (B, C) sums -> (B, C) group means
        means = per_channel.reshape(b, num_groups, per_group).sum(-1) / count
        return jnp.repeat(means, per_group, axis=1)

    mean = group_mean(xf.sum(axis=1))
    var = group_mean(jnp.square(xf - mean[:, None, :]).sum(axis=1))
    gain = jax.lax.rsqrt(var + epsilon) * scale.astype(jnp.float32)  # (B, C)
    shift = bias.astype(jnp.float32) - mean * gain
    return (xf * gain[:, None, :] + shift[:, None, :]).reshape(x.shape)


class GroupNorm32(nn.Module):
    """GroupNorm (32 groups, eps 1e-5 like ``torch.nn.GroupNorm``) computed in float32, cast to ``dtype``.

    Input (..., C) channels-last with C divisible by ``num_groups``; statistics over all axes except the
    batch axis (axis 0) and the group, as in PyTorch.
    """

    num_groups: int = 32
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        if channels % self.num_groups:
            raise ValueError(
                f"GroupNorm32: {channels} channels are not divisible by {self.num_groups} groups"
            )
        scale = self.param("scale", nn.initializers.ones_init(), (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (channels,), self.param_dtype)
        return group_norm(x, self.num_groups, scale, bias, self.epsilon).astype(self.dtype)


def conv3x3(features: int, *, name: str, dtype: Dtype, param_dtype: Dtype, stride: int = 1,
            zero: bool = False) -> nn.Conv:
    """3x3 conv with PyTorch's symmetric padding 1 (also for stride 2, unlike Flax ``'SAME'``)."""
    extra = {"kernel_init": zero_init()} if zero else {}
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=PAD_SAME_3X3, dtype=dtype,
                   param_dtype=param_dtype, name=name, **extra)


def conv1x1(features: int, *, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.Conv:
    """1x1 conv (no padding)."""
    return nn.Conv(features, (1, 1), padding="VALID", dtype=dtype, param_dtype=param_dtype, name=name)


def upsample_nearest2x(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, 2H, 2W, C) nearest neighbour, same as ``F.interpolate(scale_factor=2)``."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


def avg_pool2x2(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H//2, W//2, C), 2x2 mean with stride 2 (``nn.AvgPool2d(2, 2)``)."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class Upsample(nn.Module):
    """Nearest x2 upsampling, then an optional 3x3 conv (``conv``). NHWC in, NHWC out."""

    use_conv: bool = False
    out_channels: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        out_channels = self.out_channels or channels
        if not self.use_conv and out_channels != channels:
            raise ValueError(f"Upsample without conv cannot change channels {channels} -> {out_channels}")
        x = upsample_nearest2x(x.astype(self.dtype))
        if self.use_conv:
            x = conv3x3(out_channels, name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return x


class Downsample(nn.Module):
    """Stride-2 3x3 conv with symmetric padding 1 (``op``), or a 2x2 average pool. NHWC in and out."""

    use_conv: bool = False
    out_channels: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        out_channels = self.out_channels or channels
        x = x.astype(self.dtype)
        if self.use_conv:
            return conv3x3(out_channels, stride=2, name="op", dtype=self.dtype,
                           param_dtype=self.param_dtype)(x)
        if out_channels != channels:
            raise ValueError(f"Downsample without conv cannot change channels {channels} -> {out_channels}")
        return avg_pool2x2(x)


class ResBlock(nn.Module):
    """guided-diffusion residual block conditioned on an embedding.

    ``h = conv(SiLU(GN(x)))`` (with ``up``/``down`` resampling of both ``h`` and ``x`` between the SiLU
    and the conv); the embedding goes through ``SiLU -> Dense``; with ``use_scale_shift_norm`` it is split
    into (scale, shift) and ``h = GN(h) * (1 + scale) + shift`` before ``SiLU -> dropout -> conv``, else it
    is added to ``h`` before the whole ``GN -> SiLU -> dropout -> conv``. Skip: identity when the channel
    count is unchanged, else a 3x3 (``use_conv``) or 1x1 conv.

    Call: ``x`` (B, H, W, C), ``emb`` (B, E) -> (B, H', W', out_channels).
    """

    out_channels: int | None = None
    dropout: float = 0.0
    use_conv: bool = False
    use_scale_shift_norm: bool = False
    up: bool = False
    down: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, deterministic: bool = True) -> jax.Array:
        if self.up and self.down:
            raise ValueError("ResBlock cannot be both up and down")
        channels = x.shape[-1]
        out_channels = self.out_channels or channels
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        x = x.astype(self.dtype)

        h = nn.silu(GroupNorm32(name="in_layers_0", **kw)(x))
        if self.up:
            h, x = upsample_nearest2x(h), upsample_nearest2x(x)
        elif self.down:
            h, x = avg_pool2x2(h), avg_pool2x2(x)
        h = conv3x3(out_channels, name="in_layers_2", **kw)(h)

        # As in guided-diffusion's fp16 mode the embedding projection runs in float32, then is cast.
        emb_width = 2 * out_channels if self.use_scale_shift_norm else out_channels
        emb_out = nn.Dense(emb_width, dtype=jnp.float32, param_dtype=self.param_dtype,
                           name="emb_layers_1")(nn.silu(emb.astype(jnp.float32)))
        emb_out = emb_out.astype(self.dtype)[:, None, None, :]

        out_norm = GroupNorm32(name="out_layers_0", **kw)
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb_out, 2, axis=-1)
            h = out_norm(h) * (1 + scale) + shift
        else:
            h = out_norm(h + emb_out)
        h = nn.silu(h)
        h = nn.Dropout(rate=self.dropout)(h, deterministic=deterministic)
        h = conv3x3(out_channels, name="out_layers_3", zero=True, **kw)(h)

        if out_channels == channels:
            skip = x
        elif self.use_conv:
            skip = conv3x3(out_channels, name="skip_connection", **kw)(x)
        else:
            skip = conv1x1(out_channels, name="skip_connection", **kw)(x)
        return skip + h


def attention_implementation(dtype: Dtype, head_dim: int) -> str | None:
    """The ``jax.nn.dot_product_attention`` backend for this platform, dtype and head size.

    cuDNN flash attention on a GPU for 16-bit inputs with a head size it supports (a multiple of 8, at most
    128); XLA otherwise (CPU, TPU, float32: the same arithmetic as an explicit softmax). Decided at trace time.
    """
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if jax.default_backend() == "gpu" and half and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    return "xla"


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float,
                          bias: jax.Array | None = None) -> jax.Array:
    """softmax(scale * q k^T + bias) v with float32 logits and softmax, through ``jax.nn.dot_product_attention``
    (on the CPU without bias: :func:`_cpu_attention`, plain batched matmuls, the same numbers and faster).

    Args:
      q, k, v: (B, T, heads, head_dim) (k, v with S tokens), one dtype.
      scale: multiplies the float32 logits.
      bias: broadcastable to (B, heads, T, S), added to the scaled logits, or None.

    Returns:
      (B, T, heads, head_dim) in the input dtype.
    """
    if not q.ndim == k.ndim == v.ndim == 4:
        raise ValueError(f"attention expects (B, T, heads, head_dim) q/k/v, got {q.shape}, {k.shape}, {v.shape}")
    implementation = attention_implementation(q.dtype, q.shape[-1])
    if q.dtype == jnp.float16 and jax.default_backend() == "cpu":  # XLA:CPU has no float16 -> float32 dot
        out = dot_product_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                                    scale=scale, bias=bias)
        return out.astype(jnp.float16)
    if implementation == "xla" and bias is None and jax.default_backend() == "cpu":
        return _cpu_attention(q, k, v, scale)
    if bias is not None:  # XLA adds it to the float32 logits; cuDNN wants it in the input dtype
        bias = bias.astype(q.dtype if implementation == "cudnn" else jnp.float32)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, implementation=implementation)


# Above this many logits per head, the CPU path loops over heads so that one head's (T, S) weights stay in cache.
PER_HEAD_LOGITS = 512 * 512


def _cpu_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    """Attention without bias as plain batched matmuls (XLA:CPU): (B, T, heads, D) q and (B, S, heads, D) k, v.

    Heads go in front of the tokens, so that neither matmul needs a transposed copy of the (T, S) weights, and the
    softmax division is applied to the (T, D) output instead of the (T, S) weights (one pass less over them). With
    more than :data:`PER_HEAD_LOGITS` logits per head the heads run one after another (their weights then stay in
    cache). The same arithmetic as softmax-then-matmul up to float32 rounding. Measured against
    ``jax.nn.dot_product_attention``'s XLA path on a 2-core x86 CPU: 2.2x faster at 1024 tokens x 8 heads (ADM 256 at
    32x32), 1.7x at 256 x 16, 1.1x at 64 x 16; 20-30 % faster for the VQ autoencoder's 4096-token single head. On
    shapes not used to choose the threshold it took 0.47-0.83x jax.nn's time (batch 25 x 256 tokens x 4 heads, 512 x 8,
    2048 x 2, 4096 x 4, batch 4 x 64 x 8).
    """
    def heads_first(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))  # (B, heads, tokens, D)
        logits = jnp.einsum("bhtd,bhsd->bhts", q, k, preferred_element_type=jnp.float32) * scale
        weights = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
        out = jnp.einsum("bhts,bhsd->bhtd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
        out = out / jnp.sum(weights, axis=-1, keepdims=True)
        return jnp.swapaxes(out, 1, 2).astype(q.dtype)

    heads = q.shape[2]
    if heads == 1 or q.shape[1] * k.shape[1] <= PER_HEAD_LOGITS:
        return heads_first(q, k, v)
    per_head = [heads_first(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1]) for i in range(heads)]
    return jnp.concatenate(per_head, axis=2)


def qkv_attention(qkv: jax.Array, num_heads: int, *, legacy_order: bool) -> jax.Array:
    """Multi-head dot-product attention over tokens from a fused projection.

    Args:
      qkv: (B, T, 3 * num_heads * ch). ``legacy_order`` (``QKVAttentionLegacy``): channels are laid out
        (head, [q|k|v], ch), i.e. heads are split before q/k/v. Otherwise (``QKVAttention``):
        ([q|k|v], head, ch).
      num_heads: number of heads.

    Returns:
      (B, T, num_heads * ch), channels (head, ch). Both q and k are scaled by ``ch ** -0.25`` (as in
      guided-diffusion); logits and softmax in float32 (:func:`dot_product_attention`), cast back to the input dtype.
    """
    b, t, width = qkv.shape
    if width % (3 * num_heads):
        raise ValueError(f"qkv width {width} is not divisible by 3 * num_heads = {3 * num_heads}")
    ch = width // (3 * num_heads)
    if legacy_order:
        parts = qkv.reshape(b, t, num_heads, 3, ch)
        q, k, v = parts[:, :, :, 0], parts[:, :, :, 1], parts[:, :, :, 2]
    else:
        parts = qkv.reshape(b, t, 3, num_heads, ch)
        q, k, v = parts[:, :, 0], parts[:, :, 1], parts[:, :, 2]
    scale = jnp.asarray(1.0 / math.sqrt(math.sqrt(ch)), qkv.dtype)
    out = dot_product_attention(q * scale, k * scale, v, scale=1.0)
    return out.reshape(b, t, num_heads * ch)


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions, residual: ``x + proj_out(attn(qkv(GN(x))))``.

    ``num_head_channels != -1`` sets heads = C // num_head_channels, else ``num_heads`` is used.
    ``use_new_attention_order`` selects ``QKVAttention`` (q/k/v split first) over the legacy order.
    Call: (B, H, W, C) -> (B, H, W, C).
    """

    num_heads: int = 1
    num_head_channels: int = -1
    use_new_attention_order: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        if self.num_head_channels == -1:
            heads = self.num_heads
        else:
            if c % self.num_head_channels:
                raise ValueError(f"{c} channels are not divisible by num_head_channels {self.num_head_channels}")
            heads = c // self.num_head_channels
        if c % heads:
            raise ValueError(f"{c} channels are not divisible by {heads} attention heads")
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        x = x.astype(self.dtype).reshape(b, h * w, c)
        qkv = nn.Dense(3 * c, name="qkv", **kw)(GroupNorm32(name="norm", **kw)(x))
        a = qkv_attention(qkv, heads, legacy_order=not self.use_new_attention_order)
        a = nn.Dense(c, name="proj_out", kernel_init=zero_init(), **kw)(a)
        return (x + a).reshape(b, h, w, c)


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter tree (arrays or ``ShapeDtypeStruct``)."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params)))


# compute dtypes by the names configs use
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_by_name(name: str) -> Any:
    """The jnp dtype a config names (``"float32"``, ``"bfloat16"``, ``"float16"``); one-line error otherwise."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]
