"""1-D kernels (Gaussian, uniform, bicubic) and the 1-D matrices built from them (NumPy, construction time).

Official quirk (``blur_matrix(official=True)``): deblurring builds its 1-D matrices with taps
``j in [i - k//2, i + k//2)``, so for odd kernels the last tap is dropped (5 -> 4, 9 -> 8 taps). Zero padding.
"""
from __future__ import annotations

import numpy as np


def gaussian_taps(kernel_size: int, sigma: float) -> np.ndarray:
    """Normalised Gaussian taps at ``-(k//2) .. k//2`` (float32 exp, float32 sum, as the official runner).

    For even ``kernel_size`` the official formula gives k + 1 taps; we follow it (only odd sizes are used).
    """
    if kernel_size < 1 or sigma <= 0:
        raise ValueError(f"need kernel_size >= 1 and sigma > 0, got {kernel_size} and {sigma}")
    xs = range(-(kernel_size // 2), kernel_size // 2 + 1)
    taps = np.array([np.exp(np.float32(-0.5 * (x / sigma) ** 2)) for x in xs], dtype=np.float32)
    return (taps / taps.sum(dtype=np.float32)).astype(np.float32)


def uniform_kernel(kernel_size: int) -> np.ndarray:
    """``kernel_size`` taps of ``1 / kernel_size`` (float32, as the official ``deblur_uni``)."""
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    return np.full((kernel_size,), 1.0 / kernel_size, dtype=np.float32)


def bicubic_kernel(factor: int, a: float = -0.5) -> np.ndarray:
    """Bicubic (Keys, ``a``) downsampling taps, ``4 * factor`` of them at ``(i - 2*factor + 0.5) / factor``.

    Normalised in float64, cast to float32 and normalised again in float32 (as the official runner).
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")

    def cubic(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    n = 4 * factor
    k = np.array([cubic((i - np.floor(n / 2) + 0.5) / factor) for i in range(n)], dtype=np.float64)
    k = (k / k.sum()).astype(np.float32)
    return (k / k.sum(dtype=np.float32)).astype(np.float32)


def blur_matrix(kernel: np.ndarray, size: int, official: bool = True) -> np.ndarray:
    """(size, size) float32 1-D convolution matrix with zero padding (official ``Deblurring``).

    Row i holds taps at ``j = i - k//2 + t``. ``official=True`` uses ``t < 2 * (k//2)`` (the official
    ``range(i - k//2, i + k//2)``, which drops the last tap of odd kernels); ``official=False`` all k taps.
    """
    kernel = np.asarray(kernel, np.float32).reshape(-1)
    k = kernel.shape[0]
    half = k // 2
    taps = 2 * half if official else k
    mat = np.zeros((size, size), np.float32)
    for i in range(size):
        for t in range(taps):
            j = i - half + t
            if 0 <= j < size:
                mat[i, j] = kernel[t]
    return mat


def strided_conv_matrix(kernel: np.ndarray, size: int, stride: int) -> np.ndarray:
    """(size // stride, size) float32 strided 1-D convolution with reflect padding (official ``SRConv``).

    Output r is centred at ``i = stride//2 + stride*r``, taps ``j in [i - k//2, i + k//2)``; indices
    outside are reflected (``-j-1`` and ``2*size - 1 - j``) and accumulated.
    """
    kernel = np.asarray(kernel, np.float32).reshape(-1)
    k = kernel.shape[0]
    if size % stride != 0:
        raise ValueError(f"image side {size} is not divisible by the SR factor {stride}")
    if k // 2 + stride // 2 > size:
        raise ValueError(f"kernel of {k} taps is too wide for reflect padding on an image side of {size}")
    mat = np.zeros((size // stride, size), np.float32)
    for i in range(stride // 2, size + stride // 2, stride):
        for j in range(i - k // 2, i + k // 2):
            je = j
            if je < 0:
                je = -je - 1
            if je >= size:
                je = (size - 1) - (je - size)
            mat[i // stride, je] += kernel[j - i + k // 2]
    return mat
