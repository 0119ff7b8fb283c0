"""One function from an LQ image to the restored image: :func:`restore_image` (SR x4, inpainting, face IR).

It does what the official ``ResShiftSampler.inference`` / ``sample_func`` do, for any image size:

1. **Inpainting** (``mask`` given, ``config.model.cond_mask``): ``mask`` is (B, h, w, 1) in [-1, 1] with
   1 = unknown, the UNet's ``mask`` input as produced by the official loaders (gray mask file / 0.5 - 1).
   With ``mask_lq=True`` the LQ is masked as in training (``lq * (1 - m) - m`` with m = (mask + 1) / 2, so the
   unknown area is -1); the official demo uses the LQ file as given, which is the same for an already-masked
   image and a binary mask.
2. **Chopping**: if h or w exceeds ``tile_size`` (LQ pixels), the image is cut into ``tile_size`` tiles that
   overlap by ``tile_overlap`` (official ``ImageSpliterTh``: stride = tile - overlap, last tile aligned to the
   border); overlapping outputs are averaged uniformly (official) or with Gaussian weights. Tiles are run
   ``batch_size`` at a time in one ``lax.scan`` (:func:`resshift_jax.tiling.tiled_apply`). Official defaults:
   ``tile_size = 512 * (4 // sf)``, overlap ``64 * (4 // sf)`` (chop 512 / stride 448 at x4).
3. **Per tile** (``diffusion.restore``, the official ``sample_func``): reflect padding at the bottom/right to
   a multiple of ``config.padding_offset`` (= the UNet's ``lq_size``; note that PyTorch's reflect padding
   refuses pads >= the side, ``jnp.pad`` reflects again), bicubic x sf, VQ encode, T reverse steps (no x0
   clipping with an autoencoder), VQ decode (quantised), crop, **clamp to [-1, 1]** (as ``sample_func``).
4. **Mask back** (inpainting, official ``mask_back=True``): ``out * m + lq * (1 - m)`` with the original LQ.
5. A final clamp to [-1, 1] (a no-op after the per-tile clamp and averaging; kept so the contract holds).

Noise: every tile gets its own noise from ``jax.random.fold_in(key, tile_index)`` (tile index in row-major
tile order), split into the prior noise and the T step noises (:func:`draw_noises`), so the result does not
depend on ``batch_size``. For a reproduction run the noises can be given (``noises=``) when one tile covers
the image.

The jitted function is built once per (config, tiling settings) and cached (:func:`build_restorer`); jax
compiles it once per input shape. Face restoration (``configs/resshift/faceir.py``) is the same call: the f8
VQ and sf 1 come from the config.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from resshift_jax import diffusion as dif
from resshift_jax import schedule as sch
from resshift_jax import tiling
from resshift_jax.models import unet_swin, vq

Array = jax.Array


def default_tiling(sf: int) -> tuple[int, int]:
    """Official chop defaults in LQ pixels: (512 * (4 // sf), 64 * (4 // sf)) -> (512, 64) at x4, (2048, 256) at x1."""
    factor = max(4 // int(sf), 1)
    return 512 * factor, 64 * factor


def draw_noises(key: Array, latent_shape: tuple[int, ...], steps: int) -> tuple[Array, Array]:
    """(noise_T of ``latent_shape``, step noises of (steps,) + ``latent_shape``) from one key, float32."""
    key_T, key_steps = jax.random.split(key)
    return (jax.random.normal(key_T, latent_shape, jnp.float32),
            jax.random.normal(key_steps, (steps,) + tuple(latent_shape), jnp.float32))


# ----------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class RestoreSettings:
    """Everything that fixes the traced computation (hashable, used as the compile-cache key)."""

    config_json: str
    tile_size: int
    tile_overlap: int
    batch_size: int
    weighting: str = "uniform"
    mask_lq: bool = True
    mask_back: bool = True
    dtype: str = "float32"


def _config_json(cfg: ml_collections.ConfigDict) -> str:
    for name in ("model", "diffusion", "autoencoder"):
        if name not in cfg:
            raise ValueError(f"config has no {name!r} section")
    parts = {
        "model": cfg.model.to_dict(),
        "diffusion": cfg.diffusion.to_dict(),
        "autoencoder": cfg.autoencoder.to_dict(),
        "padding_offset": int(cfg.get("padding_offset", cfg.model.get("lq_size", 64))),
    }
    return json.dumps(parts, sort_keys=True, default=list)


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _settings(cfg, tile_size, tile_overlap, batch_size, weighting, mask_lq, mask_back, dtype) -> RestoreSettings:
    sf = int(cfg.diffusion.sf)
    default_size, default_overlap = default_tiling(sf)
    tile_size = default_size if tile_size is None else tile_size
    tile_overlap = default_overlap if tile_overlap is None else tile_overlap
    for name, value, low in (("tile_size", tile_size, 1), ("tile_overlap", tile_overlap, 0),
                             ("batch_size", batch_size, 1)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if tile_overlap >= tile_size:
        raise ValueError(f"tile_overlap ({tile_overlap}) must be smaller than tile_size ({tile_size})")
    if weighting not in ("uniform", "gaussian"):
        raise ValueError(f"weighting must be 'uniform' or 'gaussian', got {weighting!r}")
    if dtype is None:
        dtype = "float32"
    elif not isinstance(dtype, str):
        dtype = jnp.dtype(dtype).name
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return RestoreSettings(_config_json(cfg), int(tile_size), int(tile_overlap), int(batch_size), weighting,
                           bool(mask_lq), bool(mask_back), dtype)


# ----------------------------------------------------------------------------------------------- builder
@functools.lru_cache(maxsize=16)
def build_restorer(settings: RestoreSettings) -> Callable:
    """The jitted ``fn(unet_params, vq_params, lq, mask, key, noises) -> image`` for these settings."""
    parts = json.loads(settings.config_json)
    dtype = _DTYPES[settings.dtype]
    unet = unet_swin.model_from_config(parts["model"], dtype=dtype)
    pixel_space = vq.is_pixel_space(parts["autoencoder"])
    ae = None if pixel_space else vq.model_from_config(parts["autoencoder"])
    sched = sch.schedule_from_config(parts["diffusion"])
    offset = parts["padding_offset"]
    sf, steps = sched.sf, sched.num_timesteps
    f, channels = (1, unet.in_channels) if pixel_space else (ae.downsampling_factor, ae.embed_dim)

    def fn(unet_params, vq_params, lq, mask, key, noises):
        batch, height, width, _ = lq.shape
        if mask is not None:
            known = (mask.astype(lq.dtype) + 1.0) * 0.5  # 1 = unknown, 0 = known
            lq_in = lq * (1.0 - known) - known if settings.mask_lq else lq
            x = jnp.concatenate([lq_in, mask.astype(lq.dtype)], axis=-1)
        else:
            x = lq

        def model_fn(x_in, t, cond):
            y, m = cond
            y = dif.network_lq(sched, y, pixel_space=pixel_space)
            return unet.apply({"params": unet_params}, x_in, t, lq=y, mask=m)

        def encode_fn(img):
            return ae.apply({"params": vq_params}, img, method=vq.VQModel.encode)

        def decode_fn(z):
            return ae.apply({"params": vq_params}, z, method=vq.VQModel.decode)

        first_stage = (None, None) if pixel_space else (encode_fn, decode_fn)

        def per_tile(tiles, call_index):
            y, m = (tiles[..., :3], tiles[..., 3:]) if mask is not None else (tiles, None)
            n_tiles = tiles.shape[0] // batch
            ph = math.ceil(tiles.shape[1] / offset) * offset
            pw = math.ceil(tiles.shape[2] / offset) * offset
            latent = (batch, ph * sf // f, pw * sf // f, channels)
            if noises is not None:
                noise_T, step_noises = noises
            else:
                drawn = [draw_noises(jax.random.fold_in(key, call_index * settings.batch_size + k), latent, steps)
                         for k in range(n_tiles)]
                noise_T = jnp.concatenate([d[0] for d in drawn], axis=0)
                step_noises = jnp.concatenate([d[1] for d in drawn], axis=1)
            encode, decode = first_stage
            return dif.restore(model_fn, sched, y, encode_fn=encode, decode_fn=decode, noise_T=noise_T,
                               step_noises=step_noises, cond=(y, m), pad_multiple=offset, clamp=True)

        out = tiling.tiled_apply(per_tile, x, tile_size=settings.tile_size, overlap=settings.tile_overlap,
                                 batch_size=settings.batch_size, weighting=settings.weighting, with_index=True)
        if mask is not None and settings.mask_back:
            known = (mask.astype(out.dtype) + 1.0) * 0.5
            out = out * known + lq.astype(out.dtype) * (1.0 - known)
        return jnp.clip(out, -1.0, 1.0)

    return jax.jit(fn)


# ----------------------------------------------------------------------------------------------- public call
def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises a one-line ValueError when the UNet (``cfg.model``) does not fit the autoencoder and scale factor.

    The UNet's state is the latent: ``in_channels`` = ``out_channels`` = the autoencoder's ``embed_dim`` (3 in
    pixel space). Its ``lq`` input is the LQ image (B, h, w, 3), whose latent is h * sf / f on a side (f the
    autoencoder's down-sampling factor, 1 in pixel space, where the LQ is first up-sampled by sf), so the LQ
    feature extractor must reduce by ``lq_size / image_size`` = f / sf.
    """
    model = unet_swin.model_from_config(cfg.model)
    sf = int(cfg.diffusion.sf)
    if vq.is_pixel_space(cfg.get("autoencoder")):
        f, channels, reduce, state = 1, 3, 1, "the RGB image (pixel space)"
    else:
        ae = vq.model_from_config(cfg.autoencoder)
        f, channels, reduce = ae.downsampling_factor, ae.embed_dim, ae.downsampling_factor / sf
        state = "the autoencoder latent (embed_dim)"
    for field in ("in_channels", "out_channels"):
        if getattr(model, field) != channels:
            raise ValueError(f"model.{field} is {getattr(model, field)} but the diffusion state, {state}, has "
                             f"{channels} channels; set model.{field} = {channels}")
    if model.cond_lq and model.lq_size != model.image_size * reduce:
        raise ValueError(
            f"model.lq_size / model.image_size is {model.lq_size / model.image_size:g} but the LQ image reaches "
            f"the UNet at {reduce:g}x the latent size (sf {sf}, autoencoder down-sampling {f}); set "
            f"model.lq_size = {reduce:g} * model.image_size or use a matching autoencoder")


def _check_inputs(lq, mask, cfg, noises, settings: RestoreSettings) -> None:
    if lq.ndim != 4 or lq.shape[-1] != 3:
        raise ValueError(f"lq must be an NHWC RGB batch (B, h, w, 3), got shape {tuple(lq.shape)}")
    cond_mask = bool(cfg.model.get("cond_mask", False))
    if cond_mask and mask is None:
        raise ValueError(f"model {cfg.get('name', '')!r} is an inpainting model: pass a mask (1 = unknown)")
    if mask is not None:
        if not cond_mask:
            raise ValueError(f"model {cfg.get('name', '')!r} takes no mask (model.cond_mask is False)")
        if mask.ndim != 4 or mask.shape[-1] != 1:
            raise ValueError(f"mask must have shape (B, h, w, 1), got {tuple(mask.shape)}")
        if tuple(mask.shape[:3]) != tuple(lq.shape[:3]):
            raise ValueError(f"mask size {tuple(mask.shape[1:3])} does not match the image size "
                             f"{tuple(lq.shape[1:3])}")
        if int(cfg.diffusion.sf) != 1 and settings.mask_back:
            raise ValueError("mask_back needs sf == 1 (inpainting models restore at the input size)")
    if noises is not None:
        origins, _, _ = tiling.tile_grid(lq.shape[1], lq.shape[2], settings.tile_size, settings.tile_overlap)
        if len(origins) != 1:
            raise ValueError(f"noises can be given only when one tile covers the image; {len(origins)} tiles of "
                             f"{settings.tile_size} for size {tuple(lq.shape[1:3])}")


def restore_image(
    lq: Array,
    unet_params: Any,
    vq_params: Any,
    cfg: ml_collections.ConfigDict,
    key: Optional[Array] = None,
    *,
    mask: Optional[Array] = None,
    tile_size: Optional[int] = None,
    tile_overlap: Optional[int] = None,
    batch_size: int = 1,
    weighting: str = "uniform",
    mask_lq: bool = True,
    mask_back: bool = True,
    dtype: Any = None,
    noises: Optional[tuple[Array, Array]] = None,
) -> Array:
    """LQ image(s) (B, h, w, 3) in [-1, 1] -> restored (B, sf*h, sf*w, 3) in [-1, 1], any h, w.

    Args:
      lq: the low-quality image batch (usually B = 1).
      unet_params, vq_params: Flax params of the UNet (``cfg.model``) and the VQ autoencoder
        (``cfg.autoencoder``), e.g. from ``ircore.checkpoints.restore_params``; ``vq_params`` is ignored
        (pass None) for a pixel-space model (``autoencoder.kind = "none"``).
      cfg: a ResShift config (``configs/resshift/*.py``): ``model``, ``diffusion``, ``autoencoder``,
        ``padding_offset``.
      key: PRNG key (needed unless ``noises`` is given).
      mask: (B, h, w, 1) in [-1, 1], 1 = unknown; required for inpainting models, refused otherwise.
      tile_size, tile_overlap: chop size / overlap in LQ pixels (default: official, :func:`default_tiling`).
      batch_size: tiles per network call.
      weighting: ``"uniform"`` (official averaging) or ``"gaussian"`` blending of overlapping tiles.
      mask_lq: set the unknown area of the LQ to -1 before sampling (the training convention).
      mask_back: paste the known pixels of ``lq`` into the output (official default).
      dtype: UNet compute dtype (float32 / bfloat16 / float16); parameters stay float32.
      noises: ``(noise_T, step_noises)`` of the padded image's latent, shapes (B, H', W', C) and
        (T, B, H', W', C), step noises ordered t = T-1..0; only when one tile covers the image.
    """
    lq = jnp.asarray(lq, jnp.float32)
    mask = None if mask is None else jnp.asarray(mask, jnp.float32)
    settings = _settings(cfg, tile_size, tile_overlap, batch_size, weighting, mask_lq, mask_back, dtype)
    _check_inputs(lq, mask, cfg, noises, settings)
    check_config(cfg)
    if key is None and noises is None:
        raise ValueError("restore_image needs a PRNG key unless noises are given")
    if key is None:
        key = jax.random.key(0)  # unused: every noise is given
    if noises is not None:
        noises = (jnp.asarray(noises[0], jnp.float32), jnp.asarray(noises[1], jnp.float32))
    return build_restorer(settings)(unet_params, vq_params, lq, mask, key, noises)
