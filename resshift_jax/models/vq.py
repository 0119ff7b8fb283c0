"""The VQ autoencoder of ResShift (``VQModelTorch``, the CompVis latent-diffusion VQ-f4 / face VQ-f8), Flax linen.

All arrays are NHWC. ``encode(x)`` gives the diffusion latent (**not** quantised); ``decode(z)`` snaps ``z`` to
the nearest codebook entries first (as ResShift does at sampling and in its LPIPS loss), unless
``force_not_quantize=True``.

Structure (names follow the PyTorch attributes, ``.N`` list indices joined with ``_``)::

    encoder: conv_in -> down_i {block_j [, attn_j], downsample} -> mid {block_1, attn_1, block_2}
             -> norm_out -> swish -> conv_out
    quant_conv (1x1, z_channels -> embed_dim)        -- end of encode()
    codebook (n_embed x embed_dim; PyTorch ``quantize.embedding.weight``)
    post_quant_conv (1x1, embed_dim -> z_channels)
    decoder: conv_in -> mid -> up_i {block_j [, attn_j], upsample} (i from the last level down to 0)
             -> norm_out -> swish -> conv_out (no tanh)

Numerics that matter for parity with PyTorch: GroupNorm has 32 groups and eps 1e-6 (computed in float32);
downsampling pads (0, 1) bottom/right with zeros before a stride-2 3x3 conv without padding; upsampling is
nearest x2 then a 3x3 conv; the codebook search is done in float32 at HIGHEST matmul precision with
``||z||^2 + ||e||^2 - 2 z.e`` exactly as the official ``VectorQuantizer2``.

Dropout is not implemented (every released config has ``dropout 0``; ResShift uses the autoencoder frozen).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from ircore.layers import GroupNorm32, conv1x1, conv3x3, dot_product_attention, dtype_by_name, upsample_nearest2x

Dtype = Any
ConfigLike = ml_collections.ConfigDict | Mapping[str, Any]

GN_EPS = 1e-6
GN_GROUPS = 32


def _swish(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(x)


def _norm(name: str, dtype: Dtype, param_dtype: Dtype) -> GroupNorm32:
    return GroupNorm32(num_groups=GN_GROUPS, epsilon=GN_EPS, dtype=dtype, param_dtype=param_dtype, name=name)


# ----------------------------------------------------------------------------------------------- blocks
class ResnetBlock(nn.Module):
    """GN -> swish -> conv3x3 -> GN -> swish -> conv3x3, plus the input (1x1 ``nin_shortcut`` if C changes)."""

    out_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        h = conv3x3(self.out_channels, name="conv1", **kw)(_swish(_norm("norm1", **kw)(x)))
        h = conv3x3(self.out_channels, name="conv2", **kw)(_swish(_norm("norm2", **kw)(h)))
        if x.shape[-1] != self.out_channels:
            x = conv1x1(self.out_channels, name="nin_shortcut", **kw)(x)
        return x.astype(self.dtype) + h


class AttnBlock(nn.Module):
    """Single-head full spatial self-attention with 1x1 q/k/v/proj_out convs, scale C^-1/2, residual."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        hn = _norm("norm", **kw)(x)
        q, k, v = (conv1x1(c, name=n, **kw)(hn).reshape(b, h * w, 1, c) for n in ("q", "k", "v"))
        out = dot_product_attention(q, k, v, scale=int(c) ** -0.5).reshape(b, h, w, c)
        return x.astype(self.dtype) + conv1x1(c, name="proj_out", **kw)(out)


class Downsample(nn.Module):
    """Zero pad (0, 1) on the bottom/right, then a 3x3 stride-2 conv without padding (halves H and W)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)), dtype=self.dtype,
                       param_dtype=self.param_dtype, name="conv")(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv3x3(x.shape[-1], name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(
            upsample_nearest2x(x))


class Level(nn.Module):
    """One resolution level: ``num_blocks`` ResnetBlocks (each followed by attention if ``attention``), then an
    optional resampling (``'down'``, ``'up'`` or ``None``)."""

    out_channels: int
    num_blocks: int
    attention: bool
    resample: str | None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        for j in range(self.num_blocks):
            x = ResnetBlock(self.out_channels, name=f"block_{j}", **kw)(x)
            if self.attention:
                x = AttnBlock(name=f"attn_{j}", **kw)(x)
        if self.resample == "down":
            x = Downsample(name="downsample", **kw)(x)
        elif self.resample == "up":
            x = Upsample(name="upsample", **kw)(x)
        return x


class MidBlock(nn.Module):
    """ResnetBlock -> AttnBlock -> ResnetBlock at constant width."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        c = x.shape[-1]
        x = ResnetBlock(c, name="block_1", **kw)(x)
        x = AttnBlock(name="attn_1", **kw)(x)
        return ResnetBlock(c, name="block_2", **kw)(x)


class Encoder(nn.Module):
    """(B, H, W, in_channels) -> (B, H / 2^(L-1), W / 2^(L-1), z_channels), L = len(ch_mult)."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    attn_resolutions: tuple[int, ...]
    resolution: int
    z_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        h = conv3x3(self.ch, name="conv_in", **kw)(x)
        res = self.resolution
        last = len(self.ch_mult) - 1
        for i, mult in enumerate(self.ch_mult):
            h = Level(self.ch * mult, self.num_res_blocks[i], res in self.attn_resolutions,
                      "down" if i != last else None, name=f"down_{i}", **kw)(h)
            if i != last:
                res //= 2
        h = MidBlock(name="mid", **kw)(h)
        h = _swish(_norm("norm_out", **kw)(h))
        return conv3x3(self.z_channels, name="conv_out", **kw)(h)


class Decoder(nn.Module):
    """(B, h, w, z_channels) -> (B, h * 2^(L-1), w * 2^(L-1), out_ch)."""

    ch: int
    out_ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    attn_resolutions: tuple[int, ...]
    resolution: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        h = conv3x3(self.ch * self.ch_mult[-1], name="conv_in", **kw)(z)
        h = MidBlock(name="mid", **kw)(h)
        res = self.resolution // 2 ** (len(self.ch_mult) - 1)
        for i in reversed(range(len(self.ch_mult))):
            h = Level(self.ch * self.ch_mult[i], self.num_res_blocks[i] + 1, res in self.attn_resolutions,
                      "up" if i != 0 else None, name=f"up_{i}", **kw)(h)
            if i != 0:
                res *= 2
        h = _swish(_norm("norm_out", **kw)(h))
        return conv3x3(self.out_ch, name="conv_out", **kw)(h)


def _symmetric_uniform(bound: float):
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantiser (``VectorQuantizer2``): (..., D) -> (z_q, int32 indices (...)).

    Distances ``||z||^2 + ||e||^2 - 2 z.e`` in float32 at HIGHEST precision, first minimum wins (as
    ``torch.argmin``); ``z_q = z + stop_gradient(e[idx] - z)`` (straight-through, the official arithmetic).
    """

    n_embed: int
    embed_dim: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        codebook = self.param("embedding", _symmetric_uniform(1.0 / self.n_embed),
                              (self.n_embed, self.embed_dim), self.param_dtype).astype(jnp.float32)
        zf = z.astype(jnp.float32)
        flat = zf.reshape(-1, self.embed_dim)
        dist = (jnp.sum(flat**2, axis=1, keepdims=True) + jnp.sum(codebook**2, axis=1)[None, :]
                - 2 * jnp.einsum("nd,kd->nk", flat, codebook, precision=jax.lax.Precision.HIGHEST))
        indices = jnp.argmin(dist, axis=1).astype(jnp.int32)
        zq = jnp.take(codebook, indices, axis=0).reshape(zf.shape)
        zq = zf + jax.lax.stop_gradient(zq - zf)
        return zq, indices.reshape(zf.shape[:-1])


# ----------------------------------------------------------------------------------------------- model
class VQModel(nn.Module):
    """``VQModelTorch``: ``encode`` / ``quantize`` / ``decode`` on NHWC arrays; ``__call__`` = decode(encode(x))."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    attn_resolutions: tuple[int, ...]
    resolution: int
    in_channels: int
    out_ch: int
    z_channels: int
    embed_dim: int
    n_embed: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        arch = {"ch": self.ch, "ch_mult": self.ch_mult, "num_res_blocks": self.num_res_blocks,
                "attn_resolutions": self.attn_resolutions, "resolution": self.resolution}
        self.encoder = Encoder(z_channels=self.z_channels, **arch, **kw)
        self.decoder = Decoder(out_ch=self.out_ch, **arch, **kw)
        self.codebook = VectorQuantizer(self.n_embed, self.embed_dim, param_dtype=self.param_dtype)
        self.quant_conv = conv1x1(self.embed_dim, name="quant_conv", **kw)
        self.post_quant_conv = conv1x1(self.z_channels, name="post_quant_conv", **kw)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def _check(self, x: jax.Array, channels: int, what: str) -> None:
        if x.ndim != 4 or x.shape[-1] != channels:
            raise ValueError(f"VQModel.{what} expects NHWC input with {channels} channels, got shape {x.shape}")

    def encode(self, x: jax.Array) -> jax.Array:
        """(B, H, W, in_channels) image in [-1, 1] -> (B, H/f, W/f, embed_dim) latent, not quantised."""
        self._check(x, self.in_channels, "encode")
        return self.quant_conv(self.encoder(x.astype(self.dtype)))

    def quantize(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, h, w, embed_dim) -> (float32 nearest codebook vectors (B, h, w, embed_dim), int32 indices (B, h, w))."""
        self._check(z, self.embed_dim, "quantize")
        return self.codebook(z)

    def decode(self, z: jax.Array, force_not_quantize: bool = False) -> jax.Array:
        """(B, h, w, embed_dim) latent -> (B, h*f, w*f, out_ch) image; quantises first unless told not to."""
        self._check(z, self.embed_dim, "decode")
        if not force_not_quantize:
            z, _ = self.quantize(z)
        return self.decoder(self.post_quant_conv(z.astype(self.dtype)))

    def __call__(self, x: jax.Array, force_not_quantize: bool = False) -> jax.Array:
        return self.decode(self.encode(x), force_not_quantize=force_not_quantize)


# ----------------------------------------------------------------------------------------------- config
def _model_params(cfg: ConfigLike) -> Any:
    """The official ``autoencoder.params`` level of a config (accepts the wrapper with a ``params`` field)."""
    if "ddconfig" not in cfg and "params" in cfg:
        return cfg["params"]
    return cfg


def _as_dtype(value: Any) -> Any:
    if isinstance(value, str):
        return jnp.dtype(dtype_by_name(value))
    return jnp.dtype(value) if value is not None else jnp.dtype(jnp.float32)


PIXEL_SPACE = "none"  # ``autoencoder.kind`` of a pixel-space ResShift model (no first stage)


def is_pixel_space(cfg: Any) -> bool:
    """True when an ``autoencoder`` config section is absent or has ``kind == "none"``: the diffusion then runs
    on the images themselves (the official code's ``autoencoder: None``)."""
    return cfg is None or (hasattr(cfg, "get") and cfg.get("kind") == PIXEL_SPACE)


def model_from_config(cfg: ConfigLike, *, dtype: Any = None) -> VQModel:
    """Builds :class:`VQModel` from the official ``autoencoder.params`` (``ddconfig``, ``n_embed``, ``embed_dim``).

    ``cfg`` may also be the wrapper holding them under ``params`` (``configs/resshift/autoencoders/*.py``).
    The compute dtype comes from ``dtype``, else ``cfg.dtype``, else float32; parameters are float32.
    ``padding_mode`` and ``use_fp16`` are ignored, as by the official code.
    """
    params = _model_params(cfg)
    for key in ("ddconfig", "n_embed", "embed_dim"):
        if key not in params:
            raise ValueError(f"autoencoder config lacks {key!r}")
    dd = params["ddconfig"]
    if dd.get("double_z", False):
        raise ValueError("VQ autoencoder needs ddconfig.double_z = False (double_z is for the KL autoencoder)")
    ch_mult = tuple(int(m) for m in dd["ch_mult"])
    blocks = dd["num_res_blocks"]
    if isinstance(blocks, (int, np.integer)):
        blocks = (int(blocks),) * len(ch_mult)
    else:
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != len(ch_mult):
            raise ValueError(f"num_res_blocks {blocks} must have one entry per ch_mult level {ch_mult}")
    ch = int(dd["ch"])
    bad = sorted({ch * m for m in ch_mult if (ch * m) % GN_GROUPS})
    if bad:
        raise ValueError(f"channel widths {bad} (ch * ch_mult) are not divisible by {GN_GROUPS} GroupNorm groups")
    if dtype is None:
        dtype = cfg.get("dtype", None) if hasattr(cfg, "get") else None
    return VQModel(
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=blocks,
        attn_resolutions=tuple(int(r) for r in dd.get("attn_resolutions", ())),
        resolution=int(dd["resolution"]),
        in_channels=int(dd["in_channels"]),
        out_ch=int(dd["out_ch"]),
        z_channels=int(dd["z_channels"]),
        embed_dim=int(params["embed_dim"]),
        n_embed=int(params["n_embed"]),
        dtype=_as_dtype(dtype),
    )


def param_shapes(cfg: ConfigLike) -> Any:
    """The parameter tree (``jax.ShapeDtypeStruct`` leaves, no allocation) of the configured model."""
    model = model_from_config(cfg)
    f = model.downsampling_factor
    x = jax.ShapeDtypeStruct((1, 2 * f, 2 * f, model.in_channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)["params"]


def init_params(cfg: ConfigLike, rng: jax.Array) -> Any:
    """Randomly initialised float32 parameters (codebook uniform in +-1/n_embed, as the official init)."""
    model = model_from_config(cfg)
    f = model.downsampling_factor
    return model.init(rng, jnp.zeros((1, 2 * f, 2 * f, model.in_channels), jnp.float32))["params"]
