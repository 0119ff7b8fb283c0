"""GFPGAN face degradation (ResShift ``datapipe/ffhq_degradation_dataset.py``, config ``faceir_gfpgan512_lpips``)
in JAX, per sample inside ``jax.vmap``.

Per sample: blur with a 41x41 iso / aniso Gaussian (sigma U(0.1, 15), 50/50), ``cv2.filter2D`` border
(reflect-101); downsample by s ~ U(0.8, 32) to ``floor(H / s)`` with ``cv2.INTER_LINEAR`` (= torch bilinear,
half-pixel centres, no antialias); colour Gaussian noise sigma U(0, 20) / 255, clipped; JPEG at integer quality
``int(U(30, 100))`` through ``cv2.imencode`` (emulated: 8-bit input, libjpeg tables, 4:2:0, fancy chroma
upsampling, edge padding, 8-bit output -- see ``jpeg.py``); bilinear resize back to (H, W); with probability
0.01 LQ (and GT, ``gt_gray``) to gray ``0.299 R + 0.587 G + 0.114 B``; round to 8 bit. Colour jitter is off in
the released config and not implemented. The random downsampled size uses a static canvas of the largest
possible size and per-sample interpolation matrices (``resample.py``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from resshift_jax.degradations.jpeg import jpeg_roundtrip
from resshift_jax.degradations.kernels import KERNEL_TYPES, BlurKernelSpec, sample_mixed_kernel
from resshift_jax.degradations.noise import gaussian_noise
from resshift_jax.degradations.resample import filter2d_reflect, resize_valid

_CV2_GRAY = (0.299, 0.587, 0.114)
_BILINEAR = 1


@dataclasses.dataclass(frozen=True)
class FaceSpec:
    """Static parameters of the GFPGAN degradation (hashable; a jit static argument)."""

    kernel: BlurKernelSpec
    downsample_range: tuple[float, float]
    noise_range: tuple[float, float] | None
    jpeg_range: tuple[float, float] | None
    gray_prob: float = 0.0
    gt_gray: bool = True
    jpeg_tables: str = "ijg"
    jpeg_chroma_upsampling: str = "fancy"
    jpeg_pad: str = "edge"

    @classmethod
    def from_config(cls, cfg: Any) -> "FaceSpec":
        """From ``get_config('faceir')`` of ``configs/resshift/degradation_realesrgan.py``."""
        get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
        kinds = tuple(get("kernel_list"))
        if any(k not in ("iso", "aniso") for k in kinds) or len(kinds) != len(get("kernel_prob")):
            raise ValueError(f"face kernel_list must use 'iso' / 'aniso' with one prob each, got {kinds}")
        weights = dict(zip(kinds, (float(p) for p in get("kernel_prob"))))
        size = int(get("blur_kernel_size"))
        kernel = BlurKernelSpec(
            grid_size=size,
            kernel_sizes=(size,),
            kernel_prob=tuple(weights.get(k, 0.0) for k in KERNEL_TYPES),
            sinc_prob=0.0,
            sigma_range=tuple(float(v) for v in get("blur_sigma")),
        )
        pair = lambda v: None if v is None else tuple(float(x) for x in v)
        lo, hi = pair(get("downsample_range"))
        if not 0 < lo <= hi:
            raise ValueError(f"downsample_range must satisfy 0 < lo <= hi, got {(lo, hi)}")
        return cls(
            kernel=kernel,
            downsample_range=(lo, hi),
            noise_range=pair(get("noise_range")),
            jpeg_range=pair(get("jpeg_range")),
            gray_prob=float(get("gray_prob") or 0.0),
            gt_gray=bool(get("gt_gray", False)),
            jpeg_tables=str(get("jpeg_tables", "ijg")),
            jpeg_chroma_upsampling=str(get("jpeg_chroma_upsampling", "fancy")),
            jpeg_pad=str(get("jpeg_pad", "edge")),
        )

    def canvas_hw(self, hq_hw: tuple[int, int]) -> tuple[int, int]:
        side = lambda n: -(-max(math.floor(n / self.downsample_range[0]), 1) // 16) * 16
        return side(hq_hw[0]), side(hq_hw[1])

    def check_input(self, hq_hw: tuple[int, int]) -> None:
        for n in hq_hw:
            if math.floor(n / self.downsample_range[1]) < 1:
                raise ValueError(f"image side {n} is smaller than the largest downsampling factor "
                                 f"{self.downsample_range[1]}")


def _to_gray(x):
    g = jnp.sum(x * jnp.asarray(_CV2_GRAY, x.dtype), axis=-1, keepdims=True)
    return jnp.broadcast_to(g, x.shape)


def sample_face_params(key: jax.Array, spec: FaceSpec, hw: tuple[int, int]) -> dict:
    """Random parameters of one sample: ``kernel`` (g, g), ``scale`` (downsampling factor), ``size`` (2,) int32
    = floor((H, W) / scale), ``sigma`` (8-bit units), ``quality`` (integer-valued), ``gray`` (bool),
    ``noise_key``."""
    h, w = hw
    k_kernel, k_u, k_noise = jax.random.split(key, 3)
    u = jax.random.uniform(k_u, (4,), jnp.float32)
    lerp = lambda v, r: r[0] + v * (r[1] - r[0])
    scale = lerp(u[0], spec.downsample_range)
    return {
        "kernel": sample_mixed_kernel(k_kernel, spec.kernel, spec.kernel.kernel_sizes[0]),
        "scale": scale,
        "size": jnp.floor(jnp.asarray([h, w], jnp.float32) / scale).astype(jnp.int32),
        "sigma": lerp(u[1], spec.noise_range) if spec.noise_range is not None else jnp.float32(0),
        "quality": jnp.floor(lerp(u[2], spec.jpeg_range)) if spec.jpeg_range is not None else jnp.float32(100),
        "gray": u[3] < spec.gray_prob,
        "noise_key": k_noise,
    }


def apply_face(params: dict, gt: jax.Array, spec: FaceSpec) -> tuple[jax.Array, jax.Array]:
    """Degrade one (H, W, 3) GT in [0, 1] with drawn ``params`` -> (LQ in [0, 1] quantised to 1/255, GT)."""
    h, w, _ = gt.shape
    canvas = spec.canvas_hw((h, w))
    n = (params["size"][0], params["size"][1])
    gt = gt.astype(jnp.float32)
    x = filter2d_reflect(gt, params["kernel"])
    x = resize_valid(x, _BILINEAR, (h, w), n, canvas)
    if spec.noise_range is not None:
        x = gaussian_noise(params["noise_key"], x, params["sigma"], False)
    if spec.jpeg_range is not None:
        x8 = jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0  # cv2.imencode takes 8-bit input
        x = jpeg_roundtrip(x8, params["quality"], tables=spec.jpeg_tables,
                           chroma_upsampling=spec.jpeg_chroma_upsampling, pad=spec.jpeg_pad, valid_hw=n)
        x = jnp.round(x * 255.0) / 255.0  # and decodes to 8 bit
    x = resize_valid(x, _BILINEAR, n, (h, w), (h, w))
    gray = params["gray"]
    x = jnp.where(gray, _to_gray(x), x)
    if spec.gt_gray:
        gt = jnp.where(gray, _to_gray(gt), gt)
    lq = jnp.clip(jnp.round(x * 255.0), 0.0, 255.0) / 255.0
    return lq, gt


def face_degrade_single(key: jax.Array, gt: jax.Array, spec: FaceSpec) -> tuple[jax.Array, jax.Array]:
    """One (H, W, 3) GT in [0, 1] -> (LQ (H, W, 3) in [0, 1] quantised to 1/255, GT possibly turned gray)."""
    if gt.ndim != 3 or gt.shape[-1] != 3:
        raise ValueError(f"expected one (H, W, 3) RGB image, got shape {gt.shape}")
    spec.check_input(gt.shape[:2])
    return apply_face(sample_face_params(key, spec, gt.shape[:2]), gt, spec)


def face_degrade(key: jax.Array, gt: jax.Array, spec: FaceSpec) -> tuple[jax.Array, jax.Array]:
    """Batch version in the library range: gt (B, H, W, 3) in [-1, 1] -> (lq, gt) both (B, H, W, 3) in [-1, 1].

    Sample i uses ``jax.random.split(key, B)[i]``. Jit with ``spec`` static."""
    if gt.ndim != 4 or gt.shape[-1] != 3:
        raise ValueError(f"expected an (B, H, W, 3) RGB batch, got shape {gt.shape}")
    if not jnp.issubdtype(gt.dtype, jnp.floating):
        raise ValueError(f"expected float images in [-1, 1], got dtype {gt.dtype}")
    keys = jax.random.split(key, gt.shape[0])
    lq, gt01 = jax.vmap(lambda k, x: face_degrade_single(k, x, spec))(keys, (gt.astype(jnp.float32) + 1) * 0.5)
    return (lq * 2 - 1).astype(gt.dtype), (gt01 * 2 - 1).astype(gt.dtype)
