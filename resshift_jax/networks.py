"""The ResShift networks as the diffusion sees them: the Swin-UNet denoiser and the VQ first stage, built from a
config and bound to their parameters, for sampling (:mod:`resshift_jax.pipeline`) and training
(:mod:`resshift_jax.train`) alike.

* :func:`unet` / :func:`autoencoder`: the Flax modules of ``cfg.model`` / ``cfg.autoencoder`` in a compute dtype
  named by the config (``ircore.layers.dtype_by_name``); the autoencoder is None in pixel space.
* :func:`model_fn`: ``(x_in (B, H, W, C), t (B,), (lq (B, h, w, 3), mask (B, h, w, 1) or None)) -> (B, H, W, C)``
  float32, the :data:`resshift_jax.diffusion.ModelFn` of a UNet and its parameters.
* :func:`first_stage`: ``(encode, decode)``: image (B, H, W, 3) <-> latent (B, H/f, W/f, embed_dim), float32
  out, or ``(None, None)`` in pixel space.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from ircore.layers import dtype_by_name
from resshift_jax import diffusion
from resshift_jax.models import unet_swin, vq
from resshift_jax.schedule import Schedule

ImageFn = Callable[[jax.Array], jax.Array]


def unet(cfg: Any, dtype: str = "float32") -> unet_swin.UNetModelSwin:
    """The UNet of ``cfg.model`` computing in ``dtype`` (a name: float32 / bfloat16 / float16)."""
    return unet_swin.model_from_config(cfg.model, dtype=dtype_by_name(dtype))


def autoencoder(cfg: Any, dtype: Optional[str] = None) -> Optional[vq.VQModel]:
    """The VQ autoencoder of ``cfg.autoencoder`` (compute ``dtype`` by name, else the section's own ``dtype``),
    or None for a pixel-space model (``autoencoder.kind = "none"``)."""
    if vq.is_pixel_space(cfg.get("autoencoder")):
        return None
    return vq.model_from_config(cfg.autoencoder, dtype=None if dtype is None else dtype_by_name(dtype))


def model_fn(net: unet_swin.UNetModelSwin, params: Any, sched: Schedule, *, pixel_space: bool) -> diffusion.ModelFn:
    """The denoiser ``(x_in, t, (lq, mask)) -> float32 output`` of ``net`` with ``params``; a pixel-space model
    sees the bicubic-upsampled LQ (:func:`resshift_jax.diffusion.network_lq`)."""

    def apply(x_in: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
        lq, mask = cond
        lq = diffusion.network_lq(sched, lq, pixel_space=pixel_space)
        return net.apply({"params": params}, x_in, t, lq=lq, mask=mask).astype(jnp.float32)

    return apply


def first_stage(ae: Optional[vq.VQModel], params: Any) -> tuple[Optional[ImageFn], Optional[ImageFn]]:
    """(encode, decode) of the frozen VQ ``ae`` with ``params``, float32 out; (None, None) in pixel space."""
    if ae is None:
        return None, None

    def encode(x: jax.Array) -> jax.Array:
        return ae.apply({"params": params}, x, method=vq.VQModel.encode).astype(jnp.float32)

    def decode(z: jax.Array) -> jax.Array:
        return ae.apply({"params": params}, z, method=vq.VQModel.decode).astype(jnp.float32)

    return encode, decode
