"""The operator builders and their registry: ``make_operator(name, image_size, **params)``.

Names are the official ``--deg`` names (:data:`OPERATOR_NAMES`). Every builder takes ``image_size`` (an int
or (H, W)) and ``channels`` (3) and checks its parameters, raising a one-line ``ValueError``.

Deblurring (``official=True``, the default) reproduces the official ``Deblurring`` quirks: the last tap of
odd kernels is dropped (:func:`~deqir_jax.operators.kernels.blur_matrix`) and the singular values are
truncated and paired as :mod:`deqir_jax.operators.svd` describes.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np

from deqir_jax.operators.base import ImageShape, LinearOperator, _check_image_shape, _check_perm
from deqir_jax.operators.closed_form import AveragePoolSR, Colorization, Denoising, Inpainting, WalshHadamardCS
from deqir_jax.operators.kernels import (
    bicubic_kernel, blur_matrix, gaussian_taps, strided_conv_matrix, uniform_kernel,
)
from deqir_jax.operators.svd import SeparableSVDOperator, separable_operator

OFFICIAL_ZERO_THRESHOLD = 3e-2
OFFICIAL_COLOR_WEIGHTS = (0.3333, 0.3334, 0.3333)


# ------------------------------------------------------------------------------------------ super-resolution
def _check_factor(shape: ImageShape, factor: Any) -> int:
    """A positive integer SR factor that divides both image sides."""
    if int(factor) != factor or factor < 1:
        raise ValueError(f"SR factor must be a positive integer, got {factor!r}")
    factor = int(factor)
    if shape[0] % factor or shape[1] % factor:
        raise ValueError(f"image size {shape[:2]} is not divisible by the SR factor {factor}")
    return factor


def sr_averagepooling(image_size: int | Sequence[int], factor: int, channels: int = 3) -> AveragePoolSR:
    """Block-mean SR by ``factor`` (official ``SuperResolution`` and the non-SVD ``AdaptiveAvgPool2d``)."""
    shape = _check_image_shape(image_size, channels)
    return AveragePoolSR(image_shape=shape, factor=_check_factor(shape, factor))


def sr_bicubic(
    image_size: int | Sequence[int],
    factor: int,
    channels: int = 3,
    official: bool = True,
    zero_threshold: float = OFFICIAL_ZERO_THRESHOLD,
) -> SeparableSVDOperator:
    """Bicubic SR by ``factor`` (official ``SRConv``): 4*factor taps (a = -0.5), reflect padding, stride.

    ``official=True``: A uses the 1-D singular values with those ``< zero_threshold`` zeroed (the
    measurement is made with this truncated A). ``official=False``: A is the exact strided convolution;
    only ``A_pinv`` / ``project`` truncate.
    """
    shape = _check_image_shape(image_size, channels)
    factor = _check_factor(shape, factor)
    kernel = bicubic_kernel(factor)
    rows = strided_conv_matrix(kernel, shape[0], factor)
    cols = strided_conv_matrix(kernel, shape[1], factor)
    return separable_operator(
        "sr_bicubic", shape, rows, cols, rows, cols, official, zero_threshold, sort_singulars=False,
        singular_perm=None,
    )


# ------------------------------------------------------------------------------------------ deblurring
_DEBLUR_DOC = """

    ``official=True`` (default) reproduces the official ``Deblurring`` exactly: the last tap of odd
    kernels is dropped, 1-D singular values ``< zero_threshold`` are zeroed (A is truncated and the
    measurement is made with it), and the sorted singular values are paired with the wrong coefficients
    (:mod:`deqir_jax.operators.svd`, quirk 2). ``singular_perm`` (H*W,) is the official ``_perm`` (torch's
    tie order of the descending sort); without it a stable sort is used, which gives a different (equally
    arbitrary) operator. ``official=False``: all taps, A = the exact zero-padded blur, ``A_pinv`` /
    ``project`` use the truncated singular values paired correctly. An explicit 1-D ``kernel`` (K,) (the
    tensor the official ``Deblurring`` class is given) replaces the one built from the size / sigma arguments.
"""


def _deblur_builder(summary: str) -> Callable[[Callable], Callable]:
    """Gives a deblur builder its docstring: ``summary`` + the conventions every deblur builder shares."""

    def decorate(builder: Callable) -> Callable:
        builder.__doc__ = summary + _DEBLUR_DOC
        return builder

    return decorate


def _taps(explicit: Any, what: str, build: Callable[[], np.ndarray]) -> np.ndarray:
    """An explicitly given 1-D kernel (K,) as float32 taps, else ``build()``; ValueError for a bad one."""
    if explicit is None:
        return build()
    taps = np.asarray(explicit, dtype=np.float32)
    if taps.ndim != 1 or taps.shape[0] < 1 or not np.all(np.isfinite(taps)):
        raise ValueError(f"{what} must be a non-empty 1-D array of finite taps, got shape {taps.shape}")
    return taps


def _deblur(
    name: str,
    shape: ImageShape,
    kernel_rows: np.ndarray,
    kernel_cols: np.ndarray,
    official: bool,
    zero_threshold: float,
    singular_perm: Any,
) -> SeparableSVDOperator:
    """The deblur operator blurring rows with ``kernel_rows`` and columns with ``kernel_cols``."""
    for k in (kernel_rows, kernel_cols):
        if k.shape[0] // 2 >= min(shape[:2]):
            raise ValueError(f"kernel of {k.shape[0]} taps is too large for an image of size {shape[:2]}")
    return separable_operator(
        name,
        shape,
        blur_matrix(kernel_rows, shape[0], official=False),
        blur_matrix(kernel_cols, shape[1], official=False),
        blur_matrix(kernel_rows, shape[0], official=True),
        blur_matrix(kernel_cols, shape[1], official=True),
        official,
        zero_threshold,
        sort_singulars=True,
        singular_perm=singular_perm,
    )


@_deblur_builder("Gaussian deblurring (official: 5 taps, sigma 10), same kernel on rows and columns.")
def deblur_gauss(
    image_size: int | Sequence[int],
    kernel_size: int = 5,
    sigma: float = 10.0,
    channels: int = 3,
    official: bool = True,
    zero_threshold: float = OFFICIAL_ZERO_THRESHOLD,
    singular_perm: Any = None,
    kernel: Any = None,
) -> SeparableSVDOperator:
    shape = _check_image_shape(image_size, channels)
    k = _taps(kernel, "kernel", lambda: gaussian_taps(kernel_size, sigma))
    return _deblur("deblur_gauss", shape, k, k, official, zero_threshold, singular_perm)


@_deblur_builder("Uniform (box) deblurring (official: 9 taps), same kernel on rows and columns.")
def deblur_uni(
    image_size: int | Sequence[int],
    kernel_size: int = 9,
    channels: int = 3,
    official: bool = True,
    zero_threshold: float = OFFICIAL_ZERO_THRESHOLD,
    singular_perm: Any = None,
    kernel: Any = None,
) -> SeparableSVDOperator:
    shape = _check_image_shape(image_size, channels)
    k = _taps(kernel, "kernel", lambda: uniform_kernel(kernel_size))
    return _deblur("deblur_uni", shape, k, k, official, zero_threshold, singular_perm)


@_deblur_builder(
    "Anisotropic Gaussian deblurring (official ``Deblurring2D``): ``sigma1`` vertical, ``sigma2`` horizontal"
    " (explicit ``kernel1`` / ``kernel2`` replace the Gaussians)."
)
def deblur_aniso(
    image_size: int | Sequence[int],
    kernel_size: int = 9,
    sigma1: float = 1.0,
    sigma2: float = 20.0,
    channels: int = 3,
    official: bool = True,
    zero_threshold: float = OFFICIAL_ZERO_THRESHOLD,
    singular_perm: Any = None,
    kernel1: Any = None,
    kernel2: Any = None,
) -> SeparableSVDOperator:
    shape = _check_image_shape(image_size, channels)
    # along rows: vertical blur; along columns: horizontal blur
    k1 = _taps(kernel1, "kernel1", lambda: gaussian_taps(kernel_size, sigma1))
    k2 = _taps(kernel2, "kernel2", lambda: gaussian_taps(kernel_size, sigma2))
    return _deblur("deblur_aniso", shape, k1, k2, official, zero_threshold, singular_perm)


# ------------------------------------------------------------------------------------------ the others
def inpainting(image_size: int | Sequence[int], mask: Any, channels: int = 3) -> Inpainting:
    """Inpainting with ``mask`` of shape (H, W) (shared by channels) or (H, W, C); 1 = observed, 0 = missing."""
    shape = _check_image_shape(image_size, channels)
    m = np.asarray(mask)
    if m.ndim == 2:
        m = m[..., None]
    if m.ndim != 3 or m.shape[:2] != shape[:2] or m.shape[2] not in (1, shape[2]):
        raise ValueError(
            f"inpainting mask of shape {np.asarray(mask).shape} does not match the image {shape} "
            f"(expected (H, W) or (H, W, C))"
        )
    if not np.all((m == 0) | (m == 1)):
        raise ValueError("inpainting mask must contain only 0 (missing) and 1 (observed)")
    m = np.broadcast_to(m, shape).astype(np.float32)
    kept = np.flatnonzero(m.reshape(-1))
    if kept.size == 0:
        raise ValueError("inpainting mask observes no pixel")
    return Inpainting(
        mask=jnp.asarray(m), kept_indices=jnp.asarray(kept, jnp.int32), image_shape=shape
    )


def colorization(
    image_size: int | Sequence[int], weights: Sequence[float] = OFFICIAL_COLOR_WEIGHTS, channels: int = 3
) -> Colorization:
    """Gray-scale measurement ``y = sum_c w_c x_c`` (official ``Colorization``)."""
    shape = _check_image_shape(image_size, channels)
    w = np.asarray(weights, np.float32).reshape(-1)
    if w.shape != (shape[2],) or not np.any(w != 0):
        raise ValueError(f"colorization needs {shape[2]} non-zero channel weights, got {tuple(weights)}")
    return Colorization(weights=jnp.asarray(w), image_shape=shape)


def denoising(image_size: int | Sequence[int], channels: int = 3) -> Denoising:
    """Identity operator (official ``Denoising``; noise is added to y separately)."""
    return Denoising(image_shape=_check_image_shape(image_size, channels))


def _hadamard(n: int) -> np.ndarray:
    had = np.ones((1, 1), np.float32)
    while had.shape[0] < n:
        had = np.block([[had, had], [had, -had]])
    return had


def cs_walshhadamard(
    image_size: int | Sequence[int], ratio: int = 2, perm: Any = None, seed: int = 0, channels: int = 3
) -> WalshHadamardCS:
    """Walsh-Hadamard compressed sensing keeping ``C*H*W // ratio`` coefficients (``WalshHadamardCS``).

    ``perm`` (H*W,) is the coefficient permutation (the official code draws ``torch.randperm`` from its
    global seed; pass that array to match it). Without it, ``np.random.default_rng(seed).permutation``.
    H and W must be powers of two.
    """
    shape = _check_image_shape(image_size, channels)
    h, w, c = shape
    if h & (h - 1) or w & (w - 1):
        raise ValueError(f"Walsh-Hadamard CS needs power-of-two image sides, got {(h, w)}")
    if int(ratio) != ratio or ratio < 1:
        raise ValueError(f"compression ratio must be a positive integer, got {ratio!r}")
    if perm is None:
        perm = np.random.default_rng(seed).permutation(h * w)
    perm = _check_perm(perm, h * w, "Walsh-Hadamard perm")
    inv_perm = np.argsort(perm)
    return WalshHadamardCS(
        perm=jnp.asarray(perm, jnp.int32),
        inv_perm=jnp.asarray(inv_perm, jnp.int32),
        had_rows=jnp.asarray(_hadamard(h)),
        had_cols=jnp.asarray(_hadamard(w)),
        image_shape=shape,
        num_measurements=(c * h * w) // int(ratio),
    )


# ------------------------------------------------------------------------------------------ registry
_BUILDERS = {
    "sr_averagepooling": sr_averagepooling,
    "sr_bicubic": sr_bicubic,
    "deblur_gauss": deblur_gauss,
    "deblur_uni": deblur_uni,
    "deblur_aniso": deblur_aniso,
    "inpainting": inpainting,
    "colorization": colorization,
    "cs_walshhadamard": cs_walshhadamard,
    "denoising": denoising,
}
OPERATOR_NAMES = tuple(_BUILDERS)


def builder_parameters(name: str) -> tuple[str, ...]:
    """The parameters the builder of ``name`` takes besides ``image_size``; ValueError for an unknown name."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown degradation {name!r}; expected one of {', '.join(OPERATOR_NAMES)}")
    return tuple(p for p in inspect.signature(_BUILDERS[name]).parameters if p != "image_size")


def make_operator(name: str, image_size: int | Sequence[int], **params: Any) -> LinearOperator:
    """Build the operator called ``name`` (the official ``--deg`` names) for ``image_size`` (int or (H, W)).

    Parameters per name: ``sr_averagepooling(factor)``, ``sr_bicubic(factor, official, zero_threshold)``,
    ``deblur_gauss(kernel_size=5, sigma=10, official, zero_threshold, singular_perm, kernel)``,
    ``deblur_uni(kernel_size=9, ..., kernel)``, ``deblur_aniso(kernel_size=9, sigma1=1, sigma2=20, ...,
    kernel1, kernel2)`` (an explicit 1-D ``kernel`` replaces the built one),
    ``inpainting(mask)``, ``colorization(weights)``, ``cs_walshhadamard(ratio=2, perm, seed)``,
    ``denoising()``; every builder also takes ``channels`` (3).
    """
    allowed = list(builder_parameters(name))
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {unknown}; allowed: {allowed}")
    return _BUILDERS[name](image_size, **params)
