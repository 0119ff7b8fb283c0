"""From an LQ image to the restored image: :func:`make_restorer` (SR x4, inpainting, face IR).

It does what the official ``ResShiftSampler.inference`` / ``sample_func`` do, for any image size:

1. **Inpainting** (``mask`` given, ``config.model.cond_mask``): ``mask`` is (B, h, w, 1) in [-1, 1] with
   1 = unknown, the UNet's ``mask`` input as produced by the official loaders (gray mask file / 0.5 - 1).
   With ``mask_lq=True`` the LQ is masked as in training (``lq * (1 - m) - m`` with m = (mask + 1) / 2, so the
   unknown area is -1); the official demo uses the LQ file as given, which is the same for an already-masked
   image and a binary mask.
2. **Chopping**: if h or w exceeds ``tile_size`` (LQ pixels), the image is cut into ``tile_size`` tiles that
   overlap by ``tile_overlap`` (official ``ImageSpliterTh``: stride = tile - overlap, last tile aligned to the
   border); overlapping outputs are averaged uniformly (official) or with Gaussian weights. Tiles are run
   ``batch_size`` at a time in one ``lax.scan`` (:func:`resshift_jax.tiling.tiled_apply`), or, with an
   ``on_tile`` progress callback, one compiled call per ``batch_size`` tiles from Python
   (:func:`resshift_jax.tiling.tiled_apply_stepwise`; same result). Official defaults:
   ``tile_size = 512 * (4 // sf)``, overlap ``64 * (4 // sf)`` (chop 512 / stride 448 at x4).
3. **Per tile** (``diffusion.restore_lq``, the official ``sample_func``): reflect padding at the bottom/right to
   a multiple of ``config.padding_offset`` (= the UNet's ``lq_size``; note that PyTorch's reflect padding
   refuses pads >= the side, ``jnp.pad`` reflects again), bicubic x sf, VQ encode, T reverse steps (no x0
   clipping with an autoencoder), VQ decode (quantised), crop, **clamp to [-1, 1]** (as ``sample_func``).
4. **Mask back** (inpainting, official ``mask_back=True``): ``out * m + lq * (1 - m)`` with the original LQ.
5. A final clamp to [-1, 1] (a no-op after the per-tile clamp and averaging; kept so the contract holds).

Noise: every tile gets its own noise from ``jax.random.fold_in(key, tile_index)`` (tile index in row-major
tile order), split into the prior noise and the T step noises (:func:`draw_noises`), so the result does not
depend on ``batch_size``. For a reproduction run the noises can be given (``noises=``) when one tile covers
the image.

Every setting comes from the config: ``model``, ``diffusion``, ``autoencoder``, ``padding_offset`` and the
``sample`` section (:func:`resshift_jax.sample_config.sample_section`: ``seed``, ``tile_size``, ``tile_overlap``, ``batch_size``,
``tile_weighting``, ``mask_lq``, ``mask_back``, ``dtype``). :func:`make_restorer` checks them and builds the
jitted function once; jax compiles it once per input shape. Face restoration (``configs/resshift/faceir.py``)
is the same call: the f8 VQ and sf 1 come from the config.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from ircore.layers import dtype_by_name
from resshift_jax import diffusion as dif
from resshift_jax import networks
from resshift_jax import schedule as sch
from resshift_jax import tiling
from resshift_jax.models import unet_swin, vq

Array = jax.Array
WEIGHTINGS = ("uniform", "gaussian")


# ----------------------------------------------------------------------------------------------- settings
def _check_sample(s: Any) -> None:
    """One-line ValueError naming the first bad field of a ``sample`` section."""
    for name, low in (("tile_size", 1), ("tile_overlap", 0), ("batch_size", 1)):
        value = s[name]
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"sample.{name} must be an integer >= {low}, got {value!r}")
    if s.tile_overlap >= s.tile_size:
        raise ValueError(f"sample.tile_overlap ({s.tile_overlap}) must be smaller than sample.tile_size "
                         f"({s.tile_size})")
    if s.tile_weighting not in WEIGHTINGS:
        raise ValueError(f"sample.tile_weighting must be 'uniform' or 'gaussian', got {s.tile_weighting!r}")
    try:
        dtype_by_name(s.dtype)
    except ValueError as err:
        raise ValueError(f"sample.dtype: {err}") from None


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises a one-line ValueError when the UNet (``cfg.model``) does not fit the autoencoder and scale factor.

    The UNet's state is the latent: ``in_channels`` = ``out_channels`` = the autoencoder's ``embed_dim`` (3 in
    pixel space). Its ``lq`` input is the LQ image (B, h, w, 3), whose latent is h * sf / f on a side (f the
    autoencoder's down-sampling factor, 1 in pixel space, where the LQ is first up-sampled by sf), so the LQ
    feature extractor must reduce by ``lq_size / image_size`` = f / sf.
    """
    for name in ("model", "diffusion", "autoencoder"):
        if name not in cfg:
            raise ValueError(f"config has no {name!r} section")
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


# ----------------------------------------------------------------------------------------------- restorer
def draw_noises(key: Array, latent_shape: tuple[int, ...], steps: int) -> tuple[Array, Array]:
    """(noise_T of ``latent_shape``, step noises of (steps,) + ``latent_shape``) from one key, float32."""
    key_T, key_steps = jax.random.split(key)
    return (jax.random.normal(key_T, latent_shape, jnp.float32),
            jax.random.normal(key_steps, (steps,) + tuple(latent_shape), jnp.float32))


@dataclasses.dataclass(frozen=True)
class Restorer:
    """``restorer(lq, unet_params, vq_params, key, *, mask=None, noises=None) -> image``, built by
    :func:`make_restorer` (the jitted function and the settings its input checks need)."""

    fn: Callable
    name: str
    sf: int
    cond_mask: bool
    mask_back: bool
    tile_size: int
    tile_overlap: int
    batch_size: int = 1
    weighting: str = "uniform"
    prepare_fn: Optional[Callable] = None
    chunk_fn: Optional[Callable] = None
    finish_fn: Optional[Callable] = None

    def tile_count(self, height: int, width: int) -> int:
        """How many tiles an LQ image of ``height`` x ``width`` is cut into (1: no tiling)."""
        return tiling.tile_count(height, width, self.tile_size, self.tile_overlap)

    def __call__(
        self,
        lq: Array,
        unet_params: Any,
        vq_params: Any,
        key: Optional[Array] = None,
        *,
        mask: Optional[Array] = None,
        noises: Optional[tuple[Array, Array]] = None,
        on_tile: Optional[tiling.OnTile] = None,
    ) -> Array:
        """LQ image(s) (B, h, w, 3) in [-1, 1] -> restored (B, sf*h, sf*w, 3) in [-1, 1], any h, w.

        Args:
          lq: the low-quality image batch (usually B = 1).
          unet_params, vq_params: Flax params of the UNet (``cfg.model``) and the VQ autoencoder
            (``cfg.autoencoder``), e.g. from ``ircore.checkpoints.restore_params``; ``vq_params`` is ignored
            (pass None) for a pixel-space model (``autoencoder.kind = "none"``).
          key: PRNG key (needed unless ``noises`` is given).
          mask: (B, h, w, 1) in [-1, 1], 1 = unknown; required for inpainting models, refused otherwise.
          noises: ``(noise_T, step_noises)`` of the padded image's latent, shapes (B, H', W', C) and
            (T, B, H', W', C), step noises ordered t = T-1..0; only when one tile covers the image.
        """
        lq = jnp.asarray(lq, jnp.float32)
        mask = None if mask is None else jnp.asarray(mask, jnp.float32)
        self._check_inputs(lq, mask, noises)
        if key is None and noises is None:
            raise ValueError("the restorer needs a PRNG key unless noises are given")
        if key is None:
            key = jax.random.key(0)  # unused: every noise is given
        if noises is not None:
            noises = (jnp.asarray(noises[0], jnp.float32), jnp.asarray(noises[1], jnp.float32))
        if on_tile is None or self.chunk_fn is None or self.tile_count(lq.shape[1], lq.shape[2]) == 1:
            return self.fn(unet_params, vq_params, lq, mask, key, noises)
        out = tiling.tiled_apply_stepwise(
            lambda x, origins, index: self.chunk_fn(unet_params, vq_params, x, origins, index, key),
            self.prepare_fn(lq, mask), tile_size=self.tile_size, overlap=self.tile_overlap,
            batch_size=self.batch_size, weighting=self.weighting, on_tile=on_tile)
        return self.finish_fn(out, lq, mask)

    def check_mask(self, has_mask: bool) -> None:
        """One-line ValueError unless a mask is given exactly for an inpainting model (``model.cond_mask``)."""
        if self.cond_mask and not has_mask:
            raise ValueError(f"model {self.name!r} is an inpainting model: give a mask (1 = unknown; on the "
                             f"command line --config.mask=FILE)")
        if has_mask and not self.cond_mask:
            raise ValueError(f"model {self.name!r} takes no mask (model.cond_mask is False)")

    def _check_inputs(self, lq: Array, mask: Optional[Array], noises: Any) -> None:
        if lq.ndim != 4 or lq.shape[-1] != 3:
            raise ValueError(f"lq must be an NHWC RGB batch (B, h, w, 3), got shape {tuple(lq.shape)}")
        self.check_mask(mask is not None)
        if mask is not None:
            if mask.ndim != 4 or mask.shape[-1] != 1:
                raise ValueError(f"mask must have shape (B, h, w, 1), got {tuple(mask.shape)}")
            if tuple(mask.shape[:3]) != tuple(lq.shape[:3]):
                raise ValueError(f"mask size {tuple(mask.shape[1:3])} does not match the image size "
                                 f"{tuple(lq.shape[1:3])}")
            if self.sf != 1 and self.mask_back:
                raise ValueError("sample.mask_back needs sf == 1 (inpainting models restore at the input size)")
        if noises is not None:
            origins, _, _ = tiling.tile_grid(lq.shape[1], lq.shape[2], self.tile_size, self.tile_overlap)
            if len(origins) != 1:
                raise ValueError(f"noises can be given only when one tile covers the image; {len(origins)} tiles "
                                 f"of {self.tile_size} for size {tuple(lq.shape[1:3])}")


def make_restorer(cfg: ml_collections.ConfigDict) -> Restorer:
    """The restorer of a ResShift config (``configs/resshift/*.py``: ``model``, ``diffusion``, ``autoencoder``,
    ``padding_offset``, ``sample``); one-line ValueError for a config that does not fit together."""
    check_config(cfg)
    if "sample" not in cfg:
        raise ValueError("config has no 'sample' section (see resshift_jax.sample_config.sample_section)")
    s = cfg.sample
    _check_sample(s)
    net = networks.unet(cfg, s.dtype)
    ae = networks.autoencoder(cfg)
    sched = sch.schedule_from_config(cfg.diffusion)
    offset = int(cfg.get("padding_offset", cfg.model.get("lq_size", 64)))
    tile_size, overlap, batch_size = int(s.tile_size), int(s.tile_overlap), int(s.batch_size)
    mask_lq, mask_back, weighting = bool(s.mask_lq), bool(s.mask_back), str(s.tile_weighting)
    pixel_space = ae is None
    sf, steps = sched.sf, sched.num_timesteps
    f, channels = (1, net.in_channels) if pixel_space else (ae.downsampling_factor, ae.embed_dim)

    def prepare(lq, mask):
        """The network input: the LQ, or for inpainting the (masked) LQ with the mask as a fourth channel."""
        if mask is None:
            return lq
        known = (mask.astype(lq.dtype) + 1.0) * 0.5  # 1 = unknown, 0 = known
        lq_in = lq * (1.0 - known) - known if mask_lq else lq
        return jnp.concatenate([lq_in, mask.astype(lq.dtype)], axis=-1)

    def finish(out, lq, mask):
        if mask is not None and mask_back:
            known = (mask.astype(out.dtype) + 1.0) * 0.5
            out = out * known + lq.astype(out.dtype) * (1.0 - known)
        return jnp.clip(out, -1.0, 1.0)

    def per_tile(unet_params, vq_params, tiles, call_index, key, noises, batch):
        """Restores (n_tiles * batch, th, tw, 3 or 4) tiles; tile k of the call gets noise index
        call_index * batch_size + k."""
        model_fn = networks.model_fn(net, unet_params, sched, pixel_space=pixel_space)
        encode, decode = networks.first_stage(ae, vq_params)
        y, m = (tiles[..., :3], tiles[..., 3:]) if tiles.shape[-1] == 4 else (tiles, None)
        n_tiles = tiles.shape[0] // batch
        ph = math.ceil(tiles.shape[1] / offset) * offset
        pw = math.ceil(tiles.shape[2] / offset) * offset
        latent = (batch, ph * sf // f, pw * sf // f, channels)
        if noises is not None:
            noise_T, step_noises = noises
        else:
            drawn = [draw_noises(jax.random.fold_in(key, call_index * batch_size + k), latent, steps)
                     for k in range(n_tiles)]
            noise_T = jnp.concatenate([d[0] for d in drawn], axis=0)
            step_noises = jnp.concatenate([d[1] for d in drawn], axis=1)
        return dif.restore_lq(model_fn, sched, y, encode_fn=encode, decode_fn=decode, noise_T=noise_T,
                              step_noises=step_noises, cond=(y, m), pad_multiple=offset, clamp=True)

    def fn(unet_params, vq_params, lq, mask, key, noises):
        """The whole restoration in one program (tiles in a ``lax.scan``)."""
        x = prepare(lq, mask)
        out = tiling.tiled_apply(lambda tiles, i: per_tile(unet_params, vq_params, tiles, i, key, noises,
                                                           lq.shape[0]),
                                 x, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                                 weighting=weighting, with_index=True)
        return finish(out, lq, mask)

    def chunk(unet_params, vq_params, x, origins, call_index, key):
        """One call of :func:`resshift_jax.tiling.tiled_apply_stepwise`: the tiles of ``x`` at ``origins``."""
        th, tw = min(tile_size, x.shape[1]), min(tile_size, x.shape[2])
        tiles = tiling.gather_tiles(x, origins, th, tw)
        return per_tile(unet_params, vq_params, tiles, call_index, key, None, x.shape[0])

    return Restorer(fn=jax.jit(fn), name=str(cfg.get("name", "")), sf=int(cfg.diffusion.sf),
                    cond_mask=bool(cfg.model.get("cond_mask", False)), mask_back=mask_back,
                    tile_size=tile_size, tile_overlap=overlap, batch_size=batch_size, weighting=weighting,
                    prepare_fn=jax.jit(prepare), chunk_fn=jax.jit(chunk), finish_fn=jax.jit(finish))
