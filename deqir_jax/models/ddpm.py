"""The DDIM-style diffusion UNet ``Model`` (DeqIR ``models/diffusion.py``) in Flax linen.

This is the network class of DeqIR's CelebA-HQ configuration (SDEdit ``celeba_hq.ckpt``: ch 128, ch_mult
(1, 1, 2, 2, 4, 4), 2 residual blocks per level, attention at 16x16, 256x256, 3-channel eps output). It is
*not* the guided-diffusion UNet; the differences that matter for numbers are:

* sinusoidal embedding ``[sin, cos]`` (sin first) of the raw timestep with frequencies
  ``exp(-ln(1e4) k / (half - 1))``, ``half = ch // 2``; embedding MLP ``Dense -> swish -> Dense`` (no
  activation after the second layer), width ``4 ch``;
* GroupNorm with 32 groups and epsilon 1e-6 (computed in float32 here);
* residual blocks add ``temb_proj(swish(emb))`` after the first conv (no scale-shift) and use a 1x1
  ``nin_shortcut`` when the channel count changes;
* single-head attention with 1x1 q/k/v/proj_out convs and scale ``1/sqrt(C)``;
* downsampling pads one zero row at the bottom and one zero column at the right, then a stride-2 3x3 conv
  without padding (or 2x2 average pooling when ``resamp_with_conv`` is false); upsampling is nearest x2
  followed by a 3x3 conv;
* the up path has ``num_res_blocks + 1`` blocks per level and is indexed by level (``up.0`` is the
  full-resolution level and runs last).

Activations are NHWC. Every residual block, attention block, resampler, middle block and the final
GroupNorm output is recorded with ``sow`` in the ``"intermediates"`` collection under its PyTorch module
name (e.g. ``"down.1.attn.0"``); :func:`apply_with_activations` returns them as a flat dict.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn


Dtype = Any

GROUPS = 32
NORM_EPS = 1e-6


# ----------------------------------------------------------------------------------------------- pieces
def ddpm_timestep_embedding(timesteps: jax.Array, dim: int) -> jax.Array:
    """(B,) raw timesteps -> (B, dim) float32 ``[sin(t f_k), cos(t f_k)]``, ``f_k = exp(-ln(1e4) k/(half-1))``.

    Odd ``dim`` gets one zero column at the end.
    """
    half = dim // 2
    if half < 2:
        raise ValueError(f"timestep embedding dimension must be at least 4, got {dim}")
    step = np.float32(math.log(10000.0) / (half - 1))
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -step)
    args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    if dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def _swish(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(x)


class _Norm(nn.Module):
    """GroupNorm(32 groups, eps 1e-6, affine) computed in float32; output cast to ``dtype``."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        if channels % GROUPS:
            raise ValueError(f"GroupNorm needs a channel count divisible by {GROUPS}, got {channels}")
        y = nn.GroupNorm(
            num_groups=GROUPS,
            epsilon=NORM_EPS,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            use_fast_variance=False,
            name="gn",
        )(x.astype(jnp.float32))
        return y.astype(self.dtype)


def _conv(features: int, kernel: int, dtype: Dtype, name: str, *, stride: int = 1, padding: Any = None) -> nn.Conv:
    if padding is None:
        padding = ((kernel // 2, kernel // 2),) * 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=padding,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class ResnetBlock(nn.Module):
    """norm1-swish-conv1 (+ temb_proj(swish(emb))) - norm2-swish-dropout-conv2, plus (1x1) shortcut."""

    out_channels: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
        h = _conv(self.out_channels, 3, self.dtype, "conv1")(_swish(_Norm(self.dtype, name="norm1")(x)))
        proj = nn.Dense(self.out_channels, dtype=self.dtype, param_dtype=jnp.float32, name="temb_proj")(
            _swish(emb.astype(self.dtype))
        )
        h = h + proj[:, None, None, :]
        h = _swish(_Norm(self.dtype, name="norm2")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = _conv(self.out_channels, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, self.dtype, "nin_shortcut")(x)
        return x.astype(self.dtype) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, 1x1 q/k/v/proj_out convs, softmax in float32."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hgt, wid, c = x.shape
        h = _Norm(self.dtype, name="norm")(x)
        q = _conv(c, 1, self.dtype, "q")(h).reshape(b, hgt * wid, c)
        k = _conv(c, 1, self.dtype, "k")(h).reshape(b, hgt * wid, c)
        v = _conv(c, 1, self.dtype, "v")(h).reshape(b, hgt * wid, c)
        logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32) * (c ** -0.5)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, hgt, wid, c)
        return x.astype(self.dtype) + _conv(c, 1, self.dtype, "proj_out")(out)


class Downsample(nn.Module):
    """Zero pad (bottom 1, right 1) + stride-2 3x3 conv, or 2x2 average pooling."""

    with_conv: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.with_conv:
            return _conv(x.shape[-1], 3, self.dtype, "conv", stride=2, padding=((0, 1), (0, 1)))(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then (optionally) a 3x3 conv."""

    with_conv: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hgt, wid, c = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, hgt, 2, wid, 2, c)).reshape(b, 2 * hgt, 2 * wid, c)
        if self.with_conv:
            x = _conv(c, 3, self.dtype, "conv")(x)
        return x


# ----------------------------------------------------------------------------------------------- model
class Model(nn.Module):
    """DDIM-style eps-prediction UNet.

    Call: ``model.apply({"params": p}, x, timesteps)`` with ``x`` (B, H, W, in_channels), H == W ==
    ``image_size``, and ``timesteps`` (B,) raw integer indices. Returns (B, H, W, out_ch) in ``dtype``.
    Dropout is active only with ``train=True`` (needs a ``"dropout"`` rng).
    """

    image_size: int
    ch: int = 128
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0
    resamp_with_conv: bool = True
    dtype: Dtype = jnp.float32

    def _check_inputs(self, x: jax.Array, timesteps: jax.Array) -> None:
        expected = (self.image_size, self.image_size, self.in_channels)
        if x.ndim != 4:
            raise ValueError(f"DDPM Model expects NHWC input of rank 4, got shape {tuple(x.shape)}")
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"DDPM Model is configured for {self.image_size}x{self.image_size}x{self.in_channels} inputs "
                f"(H, W, C), got {tuple(x.shape[1:])}"
            )
        if timesteps.shape != (x.shape[0],):
            raise ValueError(
                f"timesteps must have shape ({x.shape[0]},) to match the batch, got {tuple(timesteps.shape)}"
            )

    @nn.compact
    def __call__(self, x: jax.Array, timesteps: jax.Array, train: bool = False) -> jax.Array:
        timesteps = jnp.asarray(timesteps)
        self._check_inputs(x, timesteps)
        num_levels = len(self.ch_mult)
        emb_ch = 4 * self.ch

        temb = ddpm_timestep_embedding(timesteps, self.ch)
        self.sow("intermediates", "h/temb_sinusoidal", temb)
        dense = lambda name: nn.Dense(emb_ch, dtype=self.dtype, param_dtype=jnp.float32, name=name)  # noqa: E731
        emb = dense("temb_dense_1")(_swish(dense("temb_dense_0")(temb.astype(self.dtype))))
        self.sow("intermediates", "h/emb", emb)

        def record(name: str, value: jax.Array) -> jax.Array:
            self.sow("intermediates", f"h/{name}", value)
            return value

        def block(name: str, features: int, h: jax.Array) -> jax.Array:
            return ResnetBlock(features, self.dropout, self.dtype, name=name.replace(".", "_"))(h, emb, train)

        def attn(name: str, h: jax.Array) -> jax.Array:
            return AttnBlock(self.dtype, name=name.replace(".", "_"))(h)

        hs = [record("conv_in", _conv(self.ch, 3, self.dtype, "conv_in")(x.astype(self.dtype)))]
        res = self.image_size
        for level in range(num_levels):
            features = self.ch * self.ch_mult[level]
            for j in range(self.num_res_blocks):
                h = record(f"down.{level}.block.{j}", block(f"down.{level}.block.{j}", features, hs[-1]))
                if res in self.attn_resolutions:
                    h = record(f"down.{level}.attn.{j}", attn(f"down.{level}.attn.{j}", h))
                hs.append(h)
            if level != num_levels - 1:
                down = Downsample(self.resamp_with_conv, self.dtype, name=f"down_{level}_downsample")
                hs.append(record(f"down.{level}.downsample", down(hs[-1])))
                res //= 2

        h = hs[-1]
        h = record("mid.block_1", block("mid.block_1", h.shape[-1], h))
        h = record("mid.attn_1", attn("mid.attn_1", h))
        h = record("mid.block_2", block("mid.block_2", h.shape[-1], h))

        for level in reversed(range(num_levels)):
            features = self.ch * self.ch_mult[level]
            for j in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                h = record(f"up.{level}.block.{j}", block(f"up.{level}.block.{j}", features, h))
                if res in self.attn_resolutions:
                    h = record(f"up.{level}.attn.{j}", attn(f"up.{level}.attn.{j}", h))
            if level != 0:
                up = Upsample(self.resamp_with_conv, self.dtype, name=f"up_{level}_upsample")
                h = record(f"up.{level}.upsample", up(h))
                res *= 2

        h = record("norm_out", _Norm(self.dtype, name="norm_out")(h))
        return _conv(self.out_ch, 3, self.dtype, "conv_out")(_swish(h))


def apply_with_activations(
    model: Model, params: Any, x: jax.Array, timesteps: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs ``model`` and returns ``(out, {name: activation})``.

    Names are the PyTorch module names (``"conv_in"``, ``"down.0.block.0"``, ``"mid.attn_1"``,
    ``"norm_out"``, ...) plus ``"temb_sinusoidal"`` and ``"emb"``; activations are NHWC.
    """
    out, state = model.apply({"params": params}, x, timesteps, mutable=["intermediates"])
    acts = {name[len("h/"):]: value[0] for name, value in state["intermediates"].items()}
    return out, acts


# ----------------------------------------------------------------------------------------------- config
def model_from_config(cfg: ml_collections.ConfigDict | Mapping[str, Any]) -> Model:
    """Builds :class:`Model` from a config with ``arch='ddpm'`` (``dtype`` optional, default float32)."""
    get = cfg.get
    arch = get("arch", "ddpm")
    if arch != "ddpm":
        raise ValueError(f"model_from_config in deqir_jax.models.ddpm builds arch 'ddpm', got {arch!r}")
    model_type = get("type", "simple")
    if model_type != "simple":
        raise ValueError(f"only model type 'simple' is supported, got {model_type!r}")
    dtype = get("dtype", "float32")
    return Model(
        image_size=int(cfg["image_size"]),
        ch=int(cfg["ch"]),
        ch_mult=tuple(int(m) for m in cfg["ch_mult"]),
        num_res_blocks=int(cfg["num_res_blocks"]),
        attn_resolutions=tuple(int(r) for r in cfg["attn_resolutions"]),
        in_channels=int(get("in_channels", 3)),
        out_ch=int(get("out_ch", 3)),
        dropout=float(get("dropout", 0.0)),
        resamp_with_conv=bool(get("resamp_with_conv", True)),
        dtype=jnp.dtype(dtype),
    )


def param_shapes(cfg: ml_collections.ConfigDict | Mapping[str, Any]) -> Any:
    """The parameter tree of the configured model as ``jax.ShapeDtypeStruct`` leaves (no allocation)."""
    model = model_from_config(cfg)
    x = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, model.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape), jnp.zeros(t.shape)))[
        "params"
    ]


