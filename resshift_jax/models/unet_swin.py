"""ResShift denoiser: the Swin-UNet of the official ``models/unet.py: UNetModelSwin``, in Flax linen (NHWC).

Call: ``model.apply({"params": p}, x, t, lq=lq, mask=mask)`` with

* ``x`` (B, H, W, in_channels): the scaled latent z_t / sqrt(kappa^2 eta_t + 1);
* ``t`` (B,) integer schedule indices 0..T-1 (embedded as they are, no rescaling);
* ``lq`` (B, H*r, W*r, 3): the LQ image in [-1, 1], r = lq_size / image_size;
* ``mask`` (B, H*r, W*r, 1) in {-1, 1} (1 = unknown) for the inpainting models (``cond_mask``), else None;

returning (B, H, W, out_channels), the predicted x_0 latent. H and W must be multiples of
``window_size * 2**(len(channel_mult) - 1)`` (64 for the released models).

Structure (``build_plan`` enumerates it; module names mirror the PyTorch attribute paths with ``.N`` -> ``_N``):
time embedding MLP; LQ conditioning (``feature_extractor``: identity when ``lq_size == image_size``, else
``log2(lq_size / image_size)`` stages of [3x3 conv, SiLU, stride-2 conv doubling the channels] starting at 16
channels, the mask concatenated to ``lq`` first) concatenated to ``x``; encoder of ResBlocks with a Swin stage
after the first ResBlock of every level whose resolution is in ``attention_resolutions``; middle
ResBlock-Swin-ResBlock; decoder with skip concatenation; GN-SiLU-conv out.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from ircore.layers import Downsample, GroupNorm32, ResBlock, Upsample, conv3x3, count_params, timestep_embedding
from resshift_jax.models.swin import SwinStage

Dtype = Any


# ----------------------------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer of a block: ``kind`` in {conv, res, swin, down, up}; ``channels`` its output width;
    ``ds`` the construction resolution (for Swin stages)."""

    kind: str
    channels: int
    ds: int = 0


@dataclasses.dataclass(frozen=True)
class Plan:
    """The block layout of a UNetModelSwin (``input_blocks``, ``middle_block``, ``output_blocks``) and its
    LQ feature extractor widths (``extractor``: output channels of each stage; empty = identity)."""

    extractor: tuple[int, ...]
    cond_channels: int
    input_blocks: tuple[tuple[Layer, ...], ...]
    middle_block: tuple[Layer, ...]
    output_blocks: tuple[tuple[Layer, ...], ...]

    def swin_stages(self) -> list[tuple[str, int]]:
        """(PyTorch prefix, construction resolution) of every Swin stage."""
        stages = []
        for group, blocks in (("input_blocks", self.input_blocks), ("output_blocks", self.output_blocks)):
            for i, block in enumerate(blocks):
                stages += [(f"{group}.{i}.{j}.", layer.ds) for j, layer in enumerate(block) if layer.kind == "swin"]
        stages += [(f"middle_block.{j}.", layer.ds) for j, layer in enumerate(self.middle_block)
                   if layer.kind == "swin"]
        return stages


def _per_level(num_res_blocks: int | Sequence[int], levels: int) -> tuple[int, ...]:
    if isinstance(num_res_blocks, int):
        return (num_res_blocks,) * levels
    counts = tuple(int(n) for n in num_res_blocks)
    if len(counts) != levels:
        raise ValueError(f"num_res_blocks {counts} must have one entry per channel_mult level ({levels})")
    return counts


def build_plan(
    *,
    image_size: int,
    model_channels: int,
    channel_mult: Sequence[int],
    num_res_blocks: int | Sequence[int],
    attention_resolutions: Sequence[int],
    cond_lq: bool = True,
    cond_mask: bool = False,
    lq_size: int = 256,
) -> Plan:
    """Enumerates the official constructor's layers (``UNetModelSwin.__init__``)."""
    levels = len(channel_mult)
    counts = _per_level(num_res_blocks, levels)
    attention_resolutions = tuple(int(r) for r in attention_resolutions)

    extractor: tuple[int, ...] = ()
    cond_channels = 0
    if cond_lq:
        if lq_size == image_size:
            cond_channels = 4 if cond_mask else 3
        else:
            ratio = lq_size / image_size
            stages = int(math.log(ratio) / math.log(2))
            if stages < 1 or 2**stages != ratio:
                raise ValueError(f"lq_size {lq_size} must be image_size {image_size} times a power of two")
            extractor = tuple(16 * 2 ** (i + 1) for i in range(stages))
            cond_channels = extractor[-1]

    ch = int(channel_mult[0] * model_channels)
    inputs: list[tuple[Layer, ...]] = [(Layer("conv", ch),)]
    skip_channels = [ch]
    ds = image_size
    for level, mult in enumerate(channel_mult):
        for j in range(counts[level]):
            ch = int(mult * model_channels)
            block = [Layer("res", ch)]
            if ds in attention_resolutions and j == 0:
                block.append(Layer("swin", ch, ds))
            inputs.append(tuple(block))
            skip_channels.append(ch)
        if level != levels - 1:
            inputs.append((Layer("down", ch),))
            skip_channels.append(ch)
            ds //= 2

    middle = (Layer("res", ch), Layer("swin", ch, ds), Layer("res", ch))

    outputs: list[tuple[Layer, ...]] = []
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(counts[level] + 1):
            skip_channels.pop()
            ch = int(model_channels * mult)
            block = [Layer("res", ch)]
            if ds in attention_resolutions and i == 0:
                block.append(Layer("swin", ch, ds))
            if level and i == counts[level]:
                block.append(Layer("up", ch))
                ds *= 2
            outputs.append(tuple(block))
    return Plan(extractor, cond_channels, tuple(inputs), middle, tuple(outputs))


# ----------------------------------------------------------------------------------------------- the model
class UNetModelSwin(nn.Module):
    """The ResShift Swin-UNet (hyper-parameters named as in the official ``model.params``).

    ``num_heads`` is used only when ``num_head_channels == -1``; otherwise the Swin stages have
    ``swin_embed_dim // num_head_channels`` heads. ``cond_lq=False`` builds an unconditional network (the
    official code cannot run in that mode). ``dtype`` is the compute dtype; norms and softmax run in float32.
    """

    image_size: int = 64
    in_channels: int = 3
    model_channels: int = 160
    out_channels: int = 3
    num_res_blocks: int | Sequence[int] = (2, 2, 2, 2)
    attention_resolutions: Sequence[int] = (64, 32, 16, 8)
    dropout: float = 0.0
    channel_mult: Sequence[int] = (1, 2, 2, 4)
    conv_resample: bool = True
    num_heads: int = 1
    num_head_channels: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    swin_depth: int = 2
    swin_embed_dim: int = 192
    window_size: int = 8
    mlp_ratio: float = 4.0
    patch_norm: bool = False
    cond_lq: bool = True
    cond_mask: bool = False
    lq_size: int = 64
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def plan(self) -> Plan:
        return build_plan(
            image_size=self.image_size, model_channels=self.model_channels, channel_mult=self.channel_mult,
            num_res_blocks=self.num_res_blocks, attention_resolutions=self.attention_resolutions,
            cond_lq=self.cond_lq, cond_mask=self.cond_mask, lq_size=self.lq_size,
        )

    @property
    def swin_heads(self) -> int:
        if self.num_head_channels == -1:
            return self.num_heads
        if self.num_head_channels <= 0 or self.swin_embed_dim % self.num_head_channels:
            raise ValueError(
                f"swin_embed_dim {self.swin_embed_dim} is not divisible by num_head_channels {self.num_head_channels}"
            )
        return self.swin_embed_dim // self.num_head_channels

    @property
    def size_multiple(self) -> int:
        """H and W of ``x`` must be multiples of this."""
        return self.window_size * 2 ** (len(self.channel_mult) - 1)

    def _layer(self, layer: Layer, name: str, h: jax.Array, emb: jax.Array, deterministic: bool) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        if layer.kind == "conv":
            return conv3x3(layer.channels, name=name, **kw)(h)
        if layer.kind == "res":
            return ResBlock(layer.channels, self.dropout, use_scale_shift_norm=self.use_scale_shift_norm,
                            name=name, **kw)(h, emb, deterministic)
        if layer.kind == "swin":
            return SwinStage(self.swin_embed_dim, self.swin_heads, layer.ds, self.window_size, self.swin_depth,
                             self.mlp_ratio, self.patch_norm, self.dropout, name=name, **kw)(h, deterministic)
        if layer.kind == "down":
            if self.resblock_updown:
                return ResBlock(layer.channels, self.dropout, use_scale_shift_norm=self.use_scale_shift_norm,
                                down=True, name=name, **kw)(h, emb, deterministic)
            return Downsample(self.conv_resample, layer.channels, name=name, **kw)(h)
        if layer.kind == "up":
            if self.resblock_updown:
                return ResBlock(layer.channels, self.dropout, use_scale_shift_norm=self.use_scale_shift_norm,
                                up=True, name=name, **kw)(h, emb, deterministic)
            return Upsample(self.conv_resample, layer.channels, name=name, **kw)(h)
        raise ValueError(f"unknown layer kind {layer.kind!r}")

    def _block(self, layers: Sequence[Layer], prefix: str, h, emb, deterministic):
        for j, layer in enumerate(layers):
            h = self._layer(layer, f"{prefix}_{j}", h, emb, deterministic)
        return h

    def _condition(self, x: jax.Array, lq: jax.Array | None, mask: jax.Array | None, plan: Plan) -> jax.Array:
        if not self.cond_lq:
            if lq is not None or mask is not None:
                raise ValueError("this UNet was built with cond_lq=False and takes no lq / mask")
            return x
        if lq is None:
            raise ValueError("this UNet is conditioned on the LQ image (cond_lq=True): pass lq=")
        if lq.ndim != 4 or lq.shape[0] != x.shape[0] or lq.shape[-1] != 3:
            raise ValueError(f"lq must be an NHWC RGB batch ({x.shape[0]}, h, w, 3), got shape {lq.shape}")
        if self.cond_mask:
            if mask is None:
                raise ValueError("this UNet is conditioned on an inpainting mask (cond_mask=True): pass mask=")
            if mask.ndim != 4 or mask.shape[:3] != lq.shape[:3] or mask.shape[3] != 1:
                raise ValueError(f"mask must have shape {lq.shape[:3] + (1,)}, got {mask.shape}")
            lq = jnp.concatenate([lq, mask.astype(lq.dtype)], axis=-1)
        elif mask is not None:
            raise ValueError("this UNet takes no mask (cond_mask=False)")
        feats = lq.astype(self.dtype)
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        for i, width in enumerate(plan.extractor):
            feats = nn.silu(conv3x3(width // 2, name=f"feature_extractor_{3 * i}", **kw)(feats))
            feats = Downsample(True, width, name=f"feature_extractor_{3 * i + 2}", **kw)(feats)
        if feats.shape[1:3] != x.shape[1:3]:
            ratio = self.lq_size // self.image_size
            raise ValueError(
                f"lq of spatial size {lq.shape[1:3]} must be {ratio}x the latent size {x.shape[1:3]}"
            )
        return jnp.concatenate([x.astype(self.dtype), feats], axis=-1)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        lq: jax.Array | None = None,
        mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"x must be NHWC with {self.in_channels} channels, got shape {x.shape}")
        multiple = self.size_multiple
        if x.shape[1] % multiple or x.shape[2] % multiple:
            raise ValueError(f"x spatial size {x.shape[1:3]} must be a multiple of {multiple}")
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (x.shape[0],))
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {t.shape}")
        plan = self.plan()

        dense = lambda feats, name: nn.Dense(feats, dtype=jnp.float32, param_dtype=self.param_dtype, name=name)
        emb = timestep_embedding(t, self.model_channels)
        emb = dense(4 * self.model_channels, "time_embed_2")(
            nn.silu(dense(4 * self.model_channels, "time_embed_0")(emb))
        )

        h = self._condition(x, lq, mask, plan)
        skips = []
        for i, block in enumerate(plan.input_blocks):
            h = self._block(block, f"input_blocks_{i}", h, emb, deterministic)
            skips.append(h)
        h = self._block(plan.middle_block, "middle_block", h, emb, deterministic)
        for i, block in enumerate(plan.output_blocks):
            h = jnp.concatenate([h, skips.pop()], axis=-1)
            h = self._block(block, f"output_blocks_{i}", h, emb, deterministic)
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        h = nn.silu(GroupNorm32(name="out_0", **kw)(h))
        return conv3x3(self.out_channels, name="out_2", **kw)(h).astype(x.dtype)


# ----------------------------------------------------------------------------------------------- config
_MODEL_FIELDS = {f.name for f in dataclasses.fields(UNetModelSwin)} - {"parent", "name"}


def _model_settings(cfg: Any) -> dict:
    """The ``model`` section of a config (or a plain mapping of UNet keyword arguments)."""
    section = cfg.model if hasattr(cfg, "model") else cfg
    settings = dict(section.to_dict() if hasattr(section, "to_dict") else section)
    for ignored in ("dims", "use_fp16"):  # official keys without meaning here (2-D only; dtype instead)
        settings.pop(ignored, None)
    unknown = sorted(set(settings) - _MODEL_FIELDS)
    if unknown:
        raise ValueError(f"unknown UNetModelSwin setting(s): {', '.join(unknown)}")
    for key in ("num_res_blocks", "attention_resolutions", "channel_mult"):
        if isinstance(settings.get(key), list):
            settings[key] = tuple(settings[key])
    return settings


def model_from_config(cfg: Any, **overrides: Any) -> UNetModelSwin:
    """Builds the UNet from a config with a ``model`` section (``configs/resshift/*.py``) or from a mapping of
    the official constructor keyword arguments; ``overrides`` (e.g. ``dtype=jnp.bfloat16``) win."""
    settings = _model_settings(cfg)
    settings.update(overrides)
    return UNetModelSwin(**settings)


def dummy_inputs(model: UNetModelSwin, batch: int = 1, size: int | None = None) -> dict[str, jax.Array]:
    """Zero inputs of the right shapes (latent ``size`` x ``size``, default ``image_size``) for init."""
    size = size or model.image_size
    lq_side = size * model.lq_size // model.image_size
    inputs = {
        "x": jnp.zeros((batch, size, size, model.in_channels), jnp.float32),
        "t": jnp.zeros((batch,), jnp.int32),
        "lq": jnp.zeros((batch, lq_side, lq_side, 3), jnp.float32) if model.cond_lq else None,
        "mask": jnp.zeros((batch, lq_side, lq_side, 1), jnp.float32) if model.cond_lq and model.cond_mask else None,
    }
    return inputs


def init_params(model: UNetModelSwin, rng: jax.Array) -> dict:
    """Random parameters (the ``params`` collection) at the construction size."""
    inputs = dummy_inputs(model)
    return model.init(rng, inputs["x"], inputs["t"], lq=inputs["lq"], mask=inputs["mask"])["params"]


def param_shapes(model: UNetModelSwin) -> dict:
    """Parameter tree of ``jax.ShapeDtypeStruct`` (``jax.eval_shape``, nothing allocated)."""
    return jax.eval_shape(lambda rng: init_params(model, rng), jax.random.key(0))


def num_params(model: UNetModelSwin) -> int:
    return count_params(param_shapes(model))
