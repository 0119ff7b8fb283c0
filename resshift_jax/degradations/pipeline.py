"""Real-ESRGAN second-order degradation (ResShift ``trainer.py: prepare_data``) and bicubic SR data, in JAX.

Per sample, from one PRNG key (all draws independent per sample inside ``jax.vmap``):

1. blur with kernel 1 (size 3..19 on a 21 grid; iso/aniso/generalised/plateau Gaussian or sinc);
2. resize by ``scale_factor`` s: up U(1, 1.5) / down U(0.15, 1) / keep with probs (0.2, 0.7, 0.1), mode
   uniform among area / bilinear / bicubic; output ``floor(H s)``;
3. Gaussian noise (sigma U(1, 30)/255) with prob 0.5, else Poisson (scale U(0.05, 3)); gray with prob 0.4; clip;
4. JPEG, quality U(30, 95);
5. with prob 0.5 a second order: blur with kernel 2 (prob 0.8), resize to ``int(H / sf * s2)`` (s2 from
   (0.3, 0.4, 0.3) / (0.3, 1.2)), noise 2;
6. with prob 0.5 [resize to H/sf + final sinc] then JPEG U(30, 95), else JPEG then [resize + sinc]; the final
   sinc is used with prob 0.8 (else identity);
7. ``clamp(round(x * 255), 0, 255) / 255``.

Differences from the reference, all deliberate: (a) the reference draws resize scale / mode, noise type,
second-order and order flags once per *batch* (Python ``random``), then mixes batches through a 10x-batch
training-pair pool; here every sample draws its own, which gives the same marginal distribution per sample and
more diversity per batch; the per-sample draws that the reference already makes (kernels, noise sigma, gray
flag, JPEG quality) are unchanged. (b) Shapes stay static under ``jit``: intermediate images live on a canvas of
the largest possible size and resizes use per-sample interpolation matrices built from the traced sizes
(``resample.py``), which reproduce torch ``F.interpolate`` for the drawn continuous scale exactly -- no
bucketing. Both branches of every random choice are computed and selected with ``jnp.where``.

Value ranges: :func:`realesrgan_degrade` and :func:`bicubic_degrade` take and return the library convention
[-1, 1]; the ``*_unit`` / single-image functions work in [0, 1] like the reference.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resshift_jax.degradations import jpeg as jpeg_lib
from resshift_jax.degradations.kernels import (
    BLUR_UNIFORMS,
    KERNEL_TYPES,
    SINC_UNIFORMS,
    BlurKernelSpec,
    choice_index,
    int_below,
    blur_kernel_from_uniforms,
    final_sinc_from_uniforms,
)
from resshift_jax.degradations.noise import gaussian_noise, poisson_noise
from resshift_jax.degradations.resample import filter2d_reflect, resize_valid
from resshift_jax.resize import imresize_matlab


def _pair(value, name: str) -> tuple[float, float]:
    value = tuple(float(v) for v in value)
    if len(value) != 2 or value[0] > value[1]:
        raise ValueError(f"{name} must be a (low, high) pair with low <= high, got {value}")
    return value


def _probs(value, n: int, name: str) -> tuple[float, ...]:
    value = tuple(float(v) for v in value)
    if len(value) != n or min(value) < 0 or sum(value) <= 0:
        raise ValueError(f"{name} must be {n} non-negative weights, got {value}")
    return value


def _kernel_probs(kernel_list, kernel_prob, name: str) -> tuple[float, ...]:
    unknown = [k for k in kernel_list if k not in KERNEL_TYPES]
    if unknown or len(kernel_list) != len(kernel_prob):
        raise ValueError(f"{name}: kernel_list {list(kernel_list)} must name {KERNEL_TYPES} with one prob each")
    weights = dict(zip(kernel_list, (float(p) for p in kernel_prob)))
    return tuple(weights.get(k, 0.0) for k in KERNEL_TYPES)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """Resize + noise + JPEG parameters of one degradation order (official ``degradation`` keys)."""

    resize_prob: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]
    gaussian_noise_prob: float
    noise_range: tuple[float, float]  # sigma in 8-bit units
    poisson_scale_range: tuple[float, float]
    gray_noise_prob: float
    jpeg_range: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class RealESRGANSpec:
    """Static description of the Real-ESRGAN pipeline (hashable; pass as a jit static argument)."""

    sf: int
    kernel1: BlurKernelSpec
    kernel2: BlurKernelSpec
    final_sinc_prob: float
    stage1: StageSpec
    stage2: StageSpec
    second_order_prob: float
    second_blur_prob: float
    final_resize_first_prob: float = 0.5
    jpeg_tables: str = "diffjpeg"
    jpeg_chroma_upsampling: str = "nearest"
    jpeg_pad: str = "zeros"

    def __post_init__(self):
        if self.sf < 1:
            raise ValueError(f"sf must be >= 1, got {self.sf}")
        for name in ("final_sinc_prob", "second_order_prob", "second_blur_prob", "final_resize_first_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for stage in (self.stage1, self.stage2):
            if stage.resize_range[0] <= 0 or not stage.resize_range[0] <= 1.0 <= stage.resize_range[1]:
                raise ValueError(f"resize_range must satisfy 0 < low <= 1 <= high, got {stage.resize_range}")
            if not 1.0 <= stage.jpeg_range[0] <= stage.jpeg_range[1] <= 100.0:
                raise ValueError(f"jpeg_range must lie in [1, 100], got {stage.jpeg_range}")
        if self.jpeg_tables not in jpeg_lib.TABLE_MODES:
            raise ValueError(f"jpeg_tables must be one of {jpeg_lib.TABLE_MODES}, got {self.jpeg_tables!r}")
        if self.jpeg_chroma_upsampling not in ("nearest", "fancy"):
            raise ValueError(f"jpeg_chroma_upsampling must be 'nearest' or 'fancy', got {self.jpeg_chroma_upsampling!r}")
        if self.jpeg_pad not in ("zeros", "edge"):
            raise ValueError(f"jpeg_pad must be 'zeros' or 'edge', got {self.jpeg_pad!r}")

    @classmethod
    def from_config(cls, cfg: Any) -> "RealESRGANSpec":
        """From ``configs/resshift/degradation_realesrgan.py`` (a ConfigDict or mapping with the official keys)."""
        get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
        if get("resize_back", False) or get("use_sharp", False):
            raise ValueError("resize_back / use_sharp are not supported (both False in every released config)")

        def kernel(suffix: str) -> BlurKernelSpec:
            grid = int(get("blur_kernel_size" + suffix))
            sizes = get("kernel_sizes" + suffix) or tuple(range(3, grid, 2))
            return BlurKernelSpec(
                grid_size=grid,
                kernel_sizes=tuple(int(k) for k in sizes),
                kernel_prob=_kernel_probs(get("kernel_list" + suffix), get("kernel_prob" + suffix),
                                          "kernel_prob" + suffix),
                sinc_prob=float(get("sinc_prob" + suffix)),
                sigma_range=_pair(get("blur_sigma" + suffix), "blur_sigma" + suffix),
                betag_range=_pair(get("betag_range" + suffix), "betag_range" + suffix),
                betap_range=_pair(get("betap_range" + suffix), "betap_range" + suffix),
            )

        def stage(suffix: str) -> StageSpec:
            return StageSpec(
                resize_prob=_probs(get("resize_prob" + suffix), 3, "resize_prob" + suffix),
                resize_range=_pair(get("resize_range" + suffix), "resize_range" + suffix),
                gaussian_noise_prob=float(get("gaussian_noise_prob" + suffix)),
                noise_range=_pair(get("noise_range" + suffix), "noise_range" + suffix),
                poisson_scale_range=_pair(get("poisson_scale_range" + suffix), "poisson_scale_range" + suffix),
                gray_noise_prob=float(get("gray_noise_prob" + suffix)),
                jpeg_range=_pair(get("jpeg_range" + suffix), "jpeg_range" + suffix),
            )

        return cls(
            sf=int(get("sf")),
            kernel1=kernel(""),
            kernel2=kernel("2"),
            final_sinc_prob=float(get("final_sinc_prob")),
            stage1=stage(""),
            stage2=stage("2"),
            second_order_prob=float(get("second_order_prob")),
            second_blur_prob=float(get("second_blur_prob")),
            final_resize_first_prob=float(get("final_resize_first_prob", 0.5)),
            jpeg_tables=str(get("jpeg_tables", "diffjpeg")),
            jpeg_chroma_upsampling=str(get("jpeg_chroma_upsampling", "nearest")),
            jpeg_pad=str(get("jpeg_pad", "zeros")),
        )

    def canvas_hw(self, hq_hw: tuple[int, int]) -> tuple[int, int]:
        """Static canvas of the intermediate images: the largest size any draw can reach, rounded up to 16."""
        def side(n: int) -> int:
            biggest = max(math.floor(n * self.stage1.resize_range[1]),
                          math.floor(n / self.sf * self.stage2.resize_range[1]), n)
            return -(-biggest // 16) * 16
        return side(hq_hw[0]), side(hq_hw[1])

    def check_input(self, hq_hw: tuple[int, int]) -> None:
        h, w = hq_hw
        for n, axis in ((h, "height"), (w, "width")):
            smallest = min(math.floor(n * self.stage1.resize_range[0]),
                           math.floor(n / self.sf * self.stage2.resize_range[0]), n // self.sf)
            if smallest < 2:
                raise ValueError(
                    f"HQ {axis} {n} is too small for sf={self.sf} and the resize ranges "
                    f"(an intermediate image could shrink to {smallest} pixels; need >= 2)"
                )


_STAGE_UNIFORMS = 8


def _lerp(u, value_range):
    return value_range[0] + u * (value_range[1] - value_range[0])


def _stage_params(u, stage: StageSpec) -> dict:
    """Resize / noise / JPEG draws of one order from 8 uniforms."""
    kind = choice_index(u[0], stage.resize_prob)  # 0 up, 1 down, 2 keep
    up = 1.0 + u[1] * (stage.resize_range[1] - 1.0)
    down = stage.resize_range[0] + u[1] * (1.0 - stage.resize_range[0])
    return {
        "scale": jnp.where(kind == 0, up, jnp.where(kind == 1, down, 1.0)),
        "mode": int_below(u[2], 3),
        "gaussian": u[3] < stage.gaussian_noise_prob,
        "sigma": _lerp(u[4], stage.noise_range),
        "poisson_scale": _lerp(u[5], stage.poisson_scale_range),
        "gray": u[6] < stage.gray_noise_prob,
        "quality": _lerp(u[7], stage.jpeg_range),
    }


def _pad_kernel(kernel: jax.Array, grid: int) -> jax.Array:
    p = (grid - kernel.shape[0]) // 2
    return jnp.pad(kernel, ((p, p), (p, p)))


def sample_realesrgan_params(key: jax.Array, spec: RealESRGANSpec, hq_hw: tuple[int, int]) -> dict:
    """All random parameters of one sample (a dict of arrays; no image needed).

    Per-order entries are stacked along a leading axis of 2 (first, second order):
    ``kernels`` (2, G, G) (kernel 1, kernel 2 zero-padded to G = the larger grid), ``scale``, ``mode``
    (0 area, 1 bilinear, 2 bicubic), ``gaussian`` (bool: Gaussian else Poisson), ``sigma``, ``poisson_scale``,
    ``gray``, ``quality`` (the JPEG quality of that order; the second order has no JPEG of its own), each (2,);
    ``size`` (2, 2) int32 output sizes of the two resizes. Scalars: ``second_order``, ``second_blur``,
    ``resize_first`` (bool), ``final_mode``, ``final_quality``; ``sinc`` (g2, g2) the final filter;
    ``noise_key`` the PRNG key of the noise maps.
    """
    h, w = hq_hw
    k_uniform, k_noise = jax.random.split(key)
    sizes = (BLUR_UNIFORMS, BLUR_UNIFORMS, SINC_UNIFORMS, _STAGE_UNIFORMS, _STAGE_UNIFORMS, 5)
    u = jax.random.uniform(k_uniform, (sum(sizes),), jnp.float32)  # one draw for every scalar choice
    u_k1, u_k2, u_sinc, u_s1, u_s2, rest = jnp.split(u, np.cumsum(sizes)[:-1])
    grid = max(spec.kernel1.grid_size, spec.kernel2.grid_size)
    kernel1 = blur_kernel_from_uniforms(u_k1, spec.kernel1)
    kernel2 = blur_kernel_from_uniforms(u_k2, spec.kernel2)
    sinc = final_sinc_from_uniforms(u_sinc, spec.kernel2.grid_size, spec.kernel2.kernel_sizes, spec.final_sinc_prob)
    stage1 = _stage_params(u_s1, spec.stage1)
    stage2 = _stage_params(u_s2, spec.stage2)
    size1 = jnp.floor(jnp.asarray([h, w], jnp.float32) * stage1["scale"]).astype(jnp.int32)
    size2 = jnp.floor(jnp.asarray([h / spec.sf, w / spec.sf], jnp.float32) * stage2["scale"]).astype(jnp.int32)
    params = {name: jnp.stack([stage1[name], stage2[name]]) for name in stage1}
    params.update({
        "kernels": jnp.stack([_pad_kernel(kernel1, grid), _pad_kernel(kernel2, grid)]),
        "size": jnp.stack([size1, size2]),
        "sinc": sinc,
        "second_order": rest[0] < spec.second_order_prob,
        "second_blur": rest[1] < spec.second_blur_prob,
        "resize_first": rest[2] < spec.final_resize_first_prob,
        "final_mode": int_below(rest[3], 3),
        "final_quality": _lerp(rest[4], spec.stage2.jpeg_range),
        "noise_key": k_noise,
    })
    return params


def apply_realesrgan(params: dict, hq: jax.Array, spec: RealESRGANSpec) -> jax.Array:
    """Degrade one (H, W, 3) image in [0, 1] with drawn ``params``; returns (H // sf, W // sf, 3) in [0, 1]
    quantised to multiples of 1/255.

    The two degradation orders share one loop body (``lax.fori_loop`` over 2 steps: blur, resize, noise, JPEG
    on step 0 only), which halves compile time; step 1 is kept only when ``second_order``.
    """
    h, w, _ = hq.shape
    canvas = spec.canvas_hw((h, w))
    final_hw = (h // spec.sf, w // spec.sf)
    jpeg = lambda x, q, valid=None: jpeg_lib.jpeg_roundtrip(
        jnp.clip(x, 0.0, 1.0), q, tables=spec.jpeg_tables, chroma_upsampling=spec.jpeg_chroma_upsampling,
        pad=spec.jpeg_pad, valid_hw=valid)
    p = params

    def order(i, carry):
        x, n = carry
        n_out = p["size"][i]
        blurred = filter2d_reflect(x, p["kernels"][i], (n[0], n[1]))
        y = jnp.where((i == 0) | p["second_blur"], blurred, x)
        # order 1: F.interpolate(scale_factor=s) -> step 1/s; order 2: F.interpolate(size=...) -> n_in / n_out
        size_step = n.astype(jnp.float32) / n_out.astype(jnp.float32)
        step = jnp.where(i == 0, 1.0 / p["scale"][i], size_step)
        y = resize_valid(y, p["mode"][i], (n[0], n[1]), (n_out[0], n_out[1]), canvas, step_hw=(step[0], step[1]))
        k_gauss, k_poisson = jax.random.split(jax.random.fold_in(p["noise_key"], i))
        stage = {name: p[name][i] for name in ("sigma", "gray", "poisson_scale")}
        noisy = jnp.where(p["gaussian"][i], gaussian_noise(k_gauss, y, stage["sigma"], stage["gray"]),
                          poisson_noise(k_poisson, y, stage["poisson_scale"], stage["gray"], (n_out[0], n_out[1])))
        y = jnp.where(i == 0, jpeg(noisy, p["quality"][i], (n_out[0], n_out[1])), noisy)
        keep = (i == 0) | p["second_order"]
        return jnp.where(keep, y, x), jnp.where(keep, n_out, n)

    x0 = jnp.zeros(canvas + (3,), jnp.float32).at[:h, :w].set(hq.astype(jnp.float32))
    x, n = jax.lax.fori_loop(0, 2, order, (x0, jnp.asarray([h, w], jnp.int32)))

    # final: [resize + sinc] then JPEG, or JPEG then [resize + sinc]
    first = p["resize_first"]
    x = jnp.where(first, x, jpeg(x, p["final_quality"], (n[0], n[1])))
    x = resize_valid(x, p["final_mode"], (n[0], n[1]), final_hw, final_hw)
    x = filter2d_reflect(x, p["sinc"])
    x = jnp.where(first, jpeg(x, p["final_quality"]), x)
    return jnp.clip(jnp.round(x * 255.0), 0.0, 255.0) / 255.0


def realesrgan_degrade_single(key: jax.Array, hq: jax.Array, spec: RealESRGANSpec) -> tuple[jax.Array, dict]:
    """One (H, W, 3) image in [0, 1] -> (LQ (H // sf, W // sf, 3) in [0, 1], the drawn params)."""
    if hq.ndim != 3 or hq.shape[-1] != 3:
        raise ValueError(f"expected one (H, W, 3) RGB image, got shape {hq.shape}")
    spec.check_input(hq.shape[:2])
    params = sample_realesrgan_params(key, spec, hq.shape[:2])
    return apply_realesrgan(params, hq, spec), params


def realesrgan_degrade_unit(keys: jax.Array, hq: jax.Array, spec: RealESRGANSpec) -> jax.Array:
    """Per-sample keys (B,) and HQ (B, H, W, 3) in [0, 1] -> LQ (B, H // sf, W // sf, 3) in [0, 1]."""
    if hq.ndim != 4 or hq.shape[-1] != 3:
        raise ValueError(f"expected an (B, H, W, 3) RGB batch, got shape {hq.shape}")
    if keys.shape[0] != hq.shape[0]:
        raise ValueError(f"need one key per image: {keys.shape[0]} keys for a batch of {hq.shape[0]}")
    return jax.vmap(lambda k, x: realesrgan_degrade_single(k, x, spec)[0])(keys, hq)


def realesrgan_degrade(key: jax.Array, hq: jax.Array, spec: RealESRGANSpec) -> jax.Array:
    """Real-ESRGAN LQ for a batch. hq (B, H, W, 3) in [-1, 1]; returns (B, H // sf, W // sf, 3) in [-1, 1]
    (values 2 k / 255 - 1). Sample i uses ``jax.random.split(key, B)[i]``. Jit with ``spec`` static."""
    if hq.ndim != 4:
        raise ValueError(f"expected an (B, H, W, 3) RGB batch, got shape {hq.shape}")
    if not jnp.issubdtype(hq.dtype, jnp.floating):
        raise ValueError(f"expected float images in [-1, 1], got dtype {hq.dtype}")
    keys = jax.random.split(key, hq.shape[0])
    lq = realesrgan_degrade_unit(keys, (hq.astype(jnp.float32) + 1.0) * 0.5, spec)
    return (lq * 2.0 - 1.0).astype(hq.dtype)


def bicubic_degrade(hq: jax.Array, sf: int = 4) -> jax.Array:
    """ResShift bicsr LQ: MATLAB-style bicubic ``imresize(hq, 1/sf)`` (antialiased, basicsr port), no rounding.

    hq (B, H, W, C) in any range (the operation is linear with rows summing to 1, so [-1, 1] works as is);
    returns (B, ceil(H / sf), ceil(W / sf), C).
    """
    if sf < 1:
        raise ValueError(f"sf must be >= 1, got {sf}")
    return imresize_matlab(hq, 1.0 / sf)
