"""Swin transformer stage of the ResShift denoiser (NHWC, Flax linen).

One stage (:class:`SwinStage`, the official ``BasicLayer``) replaces its input, without a residual around it:

    1x1 conv (C -> embed_dim) -> depth x SwinBlock (shift 0, w/2, 0, ...) -> 1x1 conv (embed_dim -> C)

A :class:`SwinBlock` is pre-norm with GroupNorm32 instead of LayerNorm: ``x + WMSA(GN(x))`` then
``x + MLP(GN(x))``; the MLP is two 1x1 convs with exact-erf GELU. Window attention adds a learnable
relative-position bias. Shifted blocks use the attention mask of the official code, which differs from the
textbook Swin mask (see :func:`shifted_window_mask`); it is recomputed for the run-time (H, W), as the
official code does. Window size and shift are fixed at construction from the stage's *training* resolution
``img_size``: a stage whose resolution is not larger than the window uses one window of that size and no shift.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ircore.layers import GroupNorm32, dot_product_attention

Dtype = Any
MASK_VALUE = -100.0


# ----------------------------------------------------------------------------------------------- constants
def effective_window(img_size: int, window_size: int, shift_size: int) -> tuple[int, int]:
    """(window, shift) a block built for an ``img_size`` x ``img_size`` input really uses."""
    if img_size <= window_size:
        return img_size, 0
    if not 0 <= shift_size < window_size:
        raise ValueError(f"shift_size {shift_size} must lie in [0, window_size={window_size})")
    return window_size, shift_size


def relative_position_index(window_size: int) -> np.ndarray:
    """Swin relative-position index, int64 [w*w, w*w]: row-major token pairs -> row of the bias table."""
    w = window_size
    rows, cols = np.meshgrid(np.arange(w), np.arange(w), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    d_row = rows[:, None] - rows[None, :] + (w - 1)
    d_col = cols[:, None] - cols[None, :] + (w - 1)
    return (d_row * (2 * w - 1) + d_col).astype(np.int64)


def _region_label(offset: np.ndarray, size: int, window_size: int, shift_size: int) -> np.ndarray:
    """Region of a coordinate along one axis after the cyclic shift: 0 body, 1 last window head, 2 wrapped tail."""
    return np.where(offset < size - window_size, 0, np.where(offset < size - shift_size, 1, 2))


def shifted_window_mask(height: int, width: int, window_size: int, shift_size: int) -> np.ndarray:
    """Attention mask of the OFFICIAL ResShift Swin block, float32 [nW, w*w, w*w] with 0 / -100.

    The official ``calculate_mask`` segments only the height axis and then reads each window's labels in
    transposed order, so with windows numbered row-major (hw, ww) and tokens ``k = r*w + c``, token k gets
    the label of image row ``hw*w + c``. Two tokens may attend to each other iff their labels agree: only the
    last row of windows is masked, grouped by the token's column inside the window. A zero shift gives an
    all-zero mask.
    """
    w, s = window_size, shift_size
    if height % w or width % w:
        raise ValueError(f"feature size {height}x{width} is not a multiple of the Swin window {w}")
    n_h, n_w = height // w, width // w
    col_in_window = np.tile(np.arange(w), w)  # token k = r*w + c  ->  c
    rows = np.arange(n_h)[:, None] * w + col_in_window[None, :]  # [n_h, w*w]
    labels = _region_label(rows, height, w, s) if s > 0 else np.zeros_like(rows)
    pair = labels[:, :, None] != labels[:, None, :]  # [n_h, N, N]
    mask = np.where(pair, MASK_VALUE, 0.0).astype(np.float32)
    return np.repeat(mask, n_w, axis=0)  # window index = hw * n_w + ww


# ----------------------------------------------------------------------------------------------- windows
def window_partition(x: jax.Array, window_size: int) -> jax.Array:
    """[B, H, W, C] -> [B * nW, w*w, C], windows row-major, tokens row-major inside a window."""
    b, h, w_, c = x.shape
    w = window_size
    x = x.reshape(b, h // w, w, w_ // w, w, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def window_reverse(windows: jax.Array, window_size: int, height: int, width: int) -> jax.Array:
    """Inverse of :func:`window_partition`: [B * nW, w*w, C] -> [B, H, W, C]."""
    w = window_size
    c = windows.shape[-1]
    x = windows.reshape(-1, height // w, width // w, w, w, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


# ----------------------------------------------------------------------------------------------- modules
class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learnable relative-position bias.

    Input/output [B * nW, N, C] with N = w*w; ``mask`` [nW, N, N] or None.
    """

    dim: int
    window_size: int
    num_heads: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool = True) -> jax.Array:
        windows, n, c = x.shape
        w = self.window_size
        if n != w * w or c != self.dim:
            raise ValueError(f"window attention expects [*, {w * w}, {self.dim}] tokens, got {x.shape}")
        heads = self.num_heads
        head_dim = c // heads
        table = self.param(
            "relative_position_bias_table",
            nn.initializers.truncated_normal(0.02),
            ((2 * w - 1) ** 2, heads),
            self.param_dtype,
        )
        dense = lambda feats, name: nn.Dense(feats, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        qkv = dense(3 * c, "qkv")(x).reshape(windows, n, 3, heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B_, N, h, d]
        q = q * jnp.asarray(head_dim**-0.5, q.dtype)
        bias = jnp.take(table, relative_position_index(w).reshape(-1), axis=0)
        bias = bias.reshape(n, n, heads).transpose(2, 0, 1)[None].astype(jnp.float32)  # [1, h, N, N]
        if mask is not None:  # shifted windows: window i of every image gets mask[i % nW]
            n_win = mask.shape[0]
            bias = (bias[None] + mask[None, :, None].astype(jnp.float32)).reshape(1, n_win, heads, n, n)
            bias = jnp.broadcast_to(bias, (windows // n_win, n_win, heads, n, n)).reshape(windows, heads, n, n)
        out = dot_product_attention(q, k, v, scale=1.0, bias=bias).reshape(windows, n, c)
        out = dense(c, "proj")(out)
        return nn.Dropout(self.dropout)(out, deterministic=deterministic)


class SwinMlp(nn.Module):
    """1x1 conv -> exact GELU -> 1x1 conv on NHWC features (dropout after each, rate 0 when released)."""

    hidden: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        conv = lambda feats, name: nn.Conv(
            feats, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        out = jax.nn.gelu(conv(self.hidden, "fc1")(x), approximate=False)
        out = nn.Dropout(self.dropout)(out, deterministic=deterministic)
        out = conv(x.shape[-1], "fc2")(out)
        return nn.Dropout(self.dropout)(out, deterministic=deterministic)


class SwinBlock(nn.Module):
    """Pre-norm (GroupNorm32) Swin block on [B, H, W, dim]; ``img_size`` fixes window and shift."""

    dim: int
    num_heads: int
    img_size: int
    window_size: int
    shift_size: int = 0
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        window, shift = effective_window(self.img_size, self.window_size, self.shift_size)
        _, height, width, channels = x.shape
        if channels != self.dim:
            raise ValueError(f"Swin block expects {self.dim} channels, got {channels}")
        if height % window or width % window:
            raise ValueError(f"feature size {height}x{width} is not a multiple of the Swin window {window}")
        norm = lambda name: GroupNorm32(dtype=self.dtype, param_dtype=self.param_dtype, name=name)

        h = norm("norm1")(x)
        if shift:
            h = jnp.roll(h, (-shift, -shift), axis=(1, 2))
            mask = jnp.asarray(shifted_window_mask(height, width, window, shift))
        else:
            mask = None
        h = window_partition(h, window)
        h = WindowAttention(
            self.dim, window, self.num_heads, self.dropout, self.dtype, self.param_dtype, name="attn"
        )(h, mask, deterministic)
        h = window_reverse(h, window, height, width)
        if shift:
            h = jnp.roll(h, (shift, shift), axis=(1, 2))
        x = x + h
        mlp = SwinMlp(int(self.dim * self.mlp_ratio), self.dropout, self.dtype, self.param_dtype, name="mlp")
        return x + mlp(norm("norm2")(x), deterministic)


class PatchProjection(nn.Module):
    """1x1 conv (the official PatchEmbed / PatchUnEmbed with patch size 1), optional GroupNorm32 after it."""

    features: int
    patch_norm: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.features, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(x)
        if self.patch_norm:
            x = GroupNorm32(dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)
        return x


class SwinStage(nn.Module):
    """The official ``BasicLayer``: [B, H, W, C] -> [B, H, W, C], no residual around the stage.

    ``img_size`` is the construction (training) resolution of this stage; at run time H and W may be any
    multiple of the window. Blocks alternate shift 0 and ``window_size // 2``.
    """

    embed_dim: int
    num_heads: int
    img_size: int
    window_size: int = 8
    depth: int = 2
    mlp_ratio: float = 4.0
    patch_norm: bool = False
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"Swin stage expects NHWC input, got shape {x.shape}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"swin embed_dim {self.embed_dim} is not divisible by {self.num_heads} heads")
        channels = x.shape[-1]
        kw = dict(patch_norm=self.patch_norm, dtype=self.dtype, param_dtype=self.param_dtype)
        h = PatchProjection(self.embed_dim, name="patch_embed", **kw)(x)
        for i in range(self.depth):
            h = SwinBlock(
                self.embed_dim,
                self.num_heads,
                self.img_size,
                self.window_size,
                shift_size=0 if i % 2 == 0 else self.window_size // 2,
                mlp_ratio=self.mlp_ratio,
                dropout=self.dropout,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"blocks_{i}",
            )(h, deterministic)
        return PatchProjection(channels, name="patch_unembed", **kw)(h)


# ----------------------------------------------------------------------------------------------- conversion
def stage_buffers(img_size: int, window_size: int, depth: int) -> dict[str, np.ndarray]:
    """The buffers a PyTorch ``BasicLayer`` built for ``img_size`` stores, by name relative to the stage.

    ``blocks.{i}.attn.relative_position_index`` for every block and ``blocks.{i}.attn_mask`` for the shifted
    ones (computed at the construction size). Here they are recomputed, so a converter only compares them.
    """
    buffers = {}
    for i in range(depth):
        window, shift = effective_window(img_size, window_size, 0 if i % 2 == 0 else window_size // 2)
        buffers[f"blocks.{i}.attn.relative_position_index"] = relative_position_index(window)
        if shift:
            buffers[f"blocks.{i}.attn_mask"] = shifted_window_mask(img_size, img_size, window, shift)
    return buffers
