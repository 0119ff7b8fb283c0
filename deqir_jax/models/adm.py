"""guided-diffusion's ADM ``UNetModel`` in Flax linen (the ImageNet / LSUN priors of DeqIR and DDNM).

Structure and numbers follow openai/guided-diffusion ``unet.py`` (``UNetModel``); the layers live in
:mod:`ircore.layers`. Activations are NHWC; the output is always float32.

Parameter tree (PyTorch name -> Flax path, :func:`deqir_jax.convert_keys.adm_torch_key_to_path`; a ``.N`` list
index is joined to its parent with ``_``)::

    time_embed.0 / time_embed.2          -> time_embed_0 / time_embed_2         (Dense)
    label_emb                            -> label_emb                           (Embed, class_cond only)
    input_blocks.I.J.<sub>               -> input_blocks_I_J/<sub>              (I-th block, J-th layer)
    middle_block.J.<sub>                 -> middle_block_J/<sub>
    output_blocks.I.J.<sub>              -> output_blocks_I_J/<sub>
    out.0 / out.2                        -> out_0 (GroupNorm32) / out_2 (conv)

with ``<sub>`` as documented in :mod:`ircore.layers` (``in_layers_2``, ``emb_layers_1``, ``qkv``, ``op``...).
``input_blocks_0_0`` is the first 3x3 conv. Leaves: conv/Dense ``kernel``/``bias``, norm ``scale``/``bias``,
``label_emb/embedding``.

dtype: with ``dtype=float16`` or ``bfloat16`` the torso (input, middle and output blocks) runs in that dtype
as guided-diffusion's ``use_fp16`` does; the timestep MLP, the per-block embedding projections, every
GroupNorm, the attention softmax and the final ``out`` layers run in float32. Parameters are float32.

Intermediates: every call ``sow``s into the ``"intermediates"`` collection ``temb_sinusoidal``, ``emb``,
``h_in/NN`` (output of ``input_blocks[NN]``), ``h_mid`` and ``h_out/NN`` (output of ``output_blocks[NN]``);
:func:`apply_with_activations` returns them as a flat dict.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from deqir_jax.models.adm_config import (  # noqa: F401 - the config half, importable by configs
    CONFIG_FIELDS, OPTIONAL_FIELDS, config_from_create_model_kwargs, guided_diffusion_model_config,
)
from ircore import layers

Dtype = Any
ConfigLike = ml_collections.ConfigDict | Mapping[str, Any]

DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


class UNetModel(nn.Module):
    """guided-diffusion ``UNetModel`` (2-D).

    Attributes mirror the PyTorch constructor: ``attention_resolutions`` are downsample *rates* (ds = 1,
    2, 4, ...), ``channel_mult`` may hold 0.5 (512x512 model), ``num_classes`` enables the class label
    embedding, ``num_head_channels != -1`` overrides ``num_heads``, ``num_heads_upsample == -1`` means
    ``num_heads`` in the output blocks.
    """

    image_size: int
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    in_channels: int = 3
    dropout: float = 0.0
    channel_mult: tuple[float, ...] = (1, 2, 4, 8)
    conv_resample: bool = True
    num_classes: int | None = None
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _check_inputs(self, x: jax.Array, timesteps: jax.Array, y: jax.Array | None) -> None:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"x must be NHWC with {self.in_channels} channels, got shape {tuple(x.shape)}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"image height and width must be divisible by {factor} (the UNet downsamples "
                f"{len(self.channel_mult) - 1} times), got {x.shape[1]}x{x.shape[2]}"
            )
        if timesteps.shape != (x.shape[0],):
            raise ValueError(f"timesteps must have shape ({x.shape[0]},), got {tuple(timesteps.shape)}")
        if (y is None) != (self.num_classes is None):
            raise ValueError("labels y must be given if and only if the model is class-conditional")
        if y is not None and y.shape != (x.shape[0],):
            raise ValueError(f"labels y must have shape ({x.shape[0]},), got {tuple(y.shape)}")

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        timesteps: jax.Array,
        y: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        """x (B, H, W, in_channels) in [-1, 1]; timesteps (B,) raw indices (int or float; a scalar is
        broadcast); y (B,) int labels for class-conditional models. Returns (B, H, W, out_channels) float32.
        ``train=True`` enables dropout (needs a ``"dropout"`` rng)."""
        timesteps = jnp.asarray(timesteps)
        if timesteps.ndim == 0:
            timesteps = jnp.broadcast_to(timesteps, (x.shape[0],))
        self._check_inputs(x, timesteps, y)
        deterministic = not train
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        f32 = {"dtype": jnp.float32, "param_dtype": self.param_dtype}
        emb_dim = 4 * self.model_channels
        heads_up = self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample

        temb = layers.timestep_embedding(timesteps, self.model_channels)
        self.sow("intermediates", "temb_sinusoidal", temb)
        emb = nn.Dense(emb_dim, name="time_embed_0", **f32)(temb)
        emb = nn.Dense(emb_dim, name="time_embed_2", **f32)(nn.silu(emb))
        if self.num_classes is not None:
            emb = emb + nn.Embed(self.num_classes, emb_dim, param_dtype=self.param_dtype,
                                 dtype=jnp.float32, name="label_emb")(y)
        self.sow("intermediates", "emb", emb)

        def res_block(name: str, h: jax.Array, out_ch: int, up: bool = False, down: bool = False):
            return layers.ResBlock(out_channels=out_ch, dropout=self.dropout,
                                   use_scale_shift_norm=self.use_scale_shift_norm, up=up, down=down,
                                   name=name, **kw)(h, emb, deterministic)

        def attention(name: str, h: jax.Array, heads: int):
            return layers.AttentionBlock(num_heads=heads, num_head_channels=self.num_head_channels,
                                         use_new_attention_order=self.use_new_attention_order,
                                         name=name, **kw)(h)

        # ---- input blocks
        ch = int(self.channel_mult[0] * self.model_channels)
        h = layers.conv3x3(ch, name="input_blocks_0_0", **kw)(x.astype(self.dtype))
        hs = [h]
        self.sow("intermediates", "h_in/00", h)
        ds = 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                i = len(hs)
                ch = int(mult * self.model_channels)
                h = res_block(f"input_blocks_{i}_0", h, ch)
                if ds in self.attention_resolutions:
                    h = attention(f"input_blocks_{i}_1", h, self.num_heads)
                hs.append(h)
                self.sow("intermediates", f"h_in/{i:02d}", h)
            if level != len(self.channel_mult) - 1:
                i = len(hs)
                if self.resblock_updown:
                    h = res_block(f"input_blocks_{i}_0", h, ch, down=True)
                else:
                    h = layers.Downsample(use_conv=self.conv_resample, out_channels=ch,
                                          name=f"input_blocks_{i}_0", **kw)(h)
                hs.append(h)
                self.sow("intermediates", f"h_in/{i:02d}", h)
                ds *= 2

        # ---- middle block
        h = res_block("middle_block_0", h, ch)
        h = attention("middle_block_1", h, self.num_heads)
        h = res_block("middle_block_2", h, ch)
        self.sow("intermediates", "h_mid", h)

        # ---- output blocks
        i = 0
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for j in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                ch = int(self.model_channels * mult)
                h = res_block(f"output_blocks_{i}_0", h, ch)
                n_layers = 1
                if ds in self.attention_resolutions:
                    h = attention(f"output_blocks_{i}_1", h, heads_up)
                    n_layers = 2
                if level and j == self.num_res_blocks:
                    name = f"output_blocks_{i}_{n_layers}"
                    if self.resblock_updown:
                        h = res_block(name, h, ch, up=True)
                    else:
                        h = layers.Upsample(use_conv=self.conv_resample, out_channels=ch, name=name, **kw)(h)
                    ds //= 2
                self.sow("intermediates", f"h_out/{i:02d}", h)
                i += 1

        # ---- head, in float32 like guided-diffusion (h.type(x.dtype) before self.out)
        h = h.astype(jnp.float32)
        h = nn.silu(layers.GroupNorm32(name="out_0", **f32)(h))
        return layers.conv3x3(self.out_channels, name="out_2", zero=True, **f32)(h)


def apply_with_activations(
    model: UNetModel,
    params: Any,
    x: jax.Array,
    timesteps: jax.Array,
    y: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs ``model`` (inference) and returns ``(out, {name: activation})``.

    Names: ``temb_sinusoidal`` (B, C), ``emb`` (B, 4C), ``h_in/NN``, ``h_mid``, ``h_out/NN`` (NHWC, in the
    compute dtype). ``params`` is the bare parameter tree (no ``{"params": ...}`` wrapper).
    """
    out, state = model.apply({"params": params}, x, timesteps, y, mutable=["intermediates"])
    acts = {name: value[0] for name, value in state["intermediates"].items()}
    return out, acts


# ----------------------------------------------------------------------------------------------- config
def _model_section(cfg: ConfigLike) -> Mapping[str, Any]:
    """Accepts the full config (with a ``model`` field) or the ``config.model`` section itself."""
    if "model" in cfg and "image_size" not in cfg:
        return cfg["model"]
    return cfg


def _parse_ints(value: Any, field: str) -> tuple[float, ...]:
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError as err:
            raise ValueError(f"{field} must be comma-separated integers, got {value!r}") from err
    return tuple(value)


def channel_mult_for(image_size: int, channel_mult: Any) -> tuple[float, ...]:
    """guided-diffusion's rule: ``''`` -> the default for the image size, else ``"1,2,2"`` or a tuple."""
    if channel_mult in ("", None, ()):
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(
                f"no default channel_mult for image_size {image_size}; "
                f"set channel_mult (defaults exist for {sorted(DEFAULT_CHANNEL_MULT)})"
            )
        return DEFAULT_CHANNEL_MULT[image_size]
    return _parse_ints(channel_mult, "channel_mult")


def attention_rates(image_size: int, attention_resolutions: Any) -> tuple[int, ...]:
    """Attention *resolutions* (``"32,16,8"`` or a tuple of pixel sizes) -> downsample rates ``size // res``."""
    resolutions = _parse_ints(attention_resolutions, "attention_resolutions")
    for res in resolutions:
        if res <= 0 or image_size % res:
            raise ValueError(f"attention resolution {res} does not divide image_size {image_size}")
    return tuple(image_size // int(res) for res in resolutions)


def model_from_config(cfg: ConfigLike) -> UNetModel:
    """Builds :class:`UNetModel` from ``config.model`` (or a full config holding a ``model`` field).

    Fields are those of guided-diffusion's ``create_model`` (see :data:`CONFIG_FIELDS`; ``dtype`` is
    ``'float32' | 'bfloat16' | 'float16'``); optional ``in_channels`` (3), ``num_classes`` (1000, used with
    ``class_cond``) and ``conv_resample`` (True). Missing fields take :data:`CONFIG_FIELDS` defaults; an
    unknown field raises ValueError.
    """
    section = _model_section(cfg)
    given = dict(section.items()) if hasattr(section, "items") else dict(section)
    unknown = sorted(set(given) - set(CONFIG_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ValueError(f"unknown ADM config field(s): {', '.join(unknown)}")
    c = {**CONFIG_FIELDS, **OPTIONAL_FIELDS, **given}
    if c["arch"] != "adm":
        raise ValueError(f"deqir_jax.models.adm builds arch 'adm', got {c['arch']!r}")
    if c["dtype"] not in layers.DTYPES:
        raise ValueError(f"dtype must be one of {sorted(layers.DTYPES)}, got {c['dtype']!r}")
    image_size = int(c["image_size"])
    return UNetModel(
        image_size=image_size,
        in_channels=int(c["in_channels"]),
        model_channels=int(c["num_channels"]),
        out_channels=2 * int(c["in_channels"]) if c["learn_sigma"] else int(c["in_channels"]),
        num_res_blocks=int(c["num_res_blocks"]),
        attention_resolutions=attention_rates(image_size, c["attention_resolutions"]),
        dropout=float(c["dropout"]),
        channel_mult=channel_mult_for(image_size, c["channel_mult"]),
        conv_resample=bool(c["conv_resample"]),
        num_classes=int(c["num_classes"]) if c["class_cond"] else None,
        num_heads=int(c["num_heads"]),
        num_head_channels=int(c["num_head_channels"]),
        num_heads_upsample=int(c["num_heads_upsample"]),
        use_scale_shift_norm=bool(c["use_scale_shift_norm"]),
        resblock_updown=bool(c["resblock_updown"]),
        use_new_attention_order=bool(c["use_new_attention_order"]),
        dtype=layers.DTYPES[c["dtype"]],
    )


def dummy_inputs(model: UNetModel, batch: int = 1) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Zero inputs ``(x, timesteps, y)`` of the configured size, for ``init``."""
    x = jnp.zeros((batch, model.image_size, model.image_size, model.in_channels), jnp.float32)
    t = jnp.zeros((batch,), jnp.int32)
    y = jnp.zeros((batch,), jnp.int32) if model.num_classes is not None else None
    return x, t, y


def init_params_shapes(cfg: ConfigLike) -> Any:
    """The parameter tree of the configured model as ``jax.ShapeDtypeStruct`` leaves (nothing allocated)."""
    model = model_from_config(cfg)

    def init():
        return model.init(jax.random.PRNGKey(0), *dummy_inputs(model))["params"]

    return jax.eval_shape(init)


param_shapes = init_params_shapes  # same name as deqir_jax.models.ddpm


__all__: Sequence[str] = (
    "UNetModel", "apply_with_activations", "model_from_config", "init_params_shapes", "param_shapes",
    "guided_diffusion_model_config", "config_from_create_model_kwargs", "channel_mult_for", "attention_rates",
)
