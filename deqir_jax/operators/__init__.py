"""Linear degradation operators of DeqIR / DDNM / DDRM, in pure JAX.

    from deqir_jax import operators as ops
    op = ops.make_operator("sr_bicubic", 256, factor=4)
    y = op.A(x)                        # x (..., H, W, C) in [-1, 1] -> y (..., *op.y_shape)

One job per module:

* :mod:`~deqir_jax.operators.base`: the interface every operator shares (:class:`LinearOperator`: ``A``,
  ``A_pinv``, ``At``, ``project``, ``null``, ``singulars``, ``y_shape``, pictures of y) and its shape checks;
* :mod:`~deqir_jax.operators.closed_form`: block-mean SR, inpainting, colorization, denoising, Walsh-Hadamard CS;
* :mod:`~deqir_jax.operators.svd`: the SVD machinery of the separable operators (SR by convolution, deblurring);
* :mod:`~deqir_jax.operators.kernels`: 1-D kernels and matrices;
* :mod:`~deqir_jax.operators.builders`: the builders and their registry (:func:`make_operator`);
* :mod:`~deqir_jax.operators.layouts`: conversions to and from the official flat vectors.

Official quirks are reproduced by default (``official=True``); see :mod:`~deqir_jax.operators.kernels` and
:mod:`~deqir_jax.operators.svd`.
"""
from deqir_jax.operators.base import Array, ImageShape, LinearOperator
from deqir_jax.operators.builders import (
    OFFICIAL_COLOR_WEIGHTS, OFFICIAL_ZERO_THRESHOLD, OPERATOR_NAMES, builder_parameters, colorization,
    cs_walshhadamard, deblur_aniso, deblur_gauss, deblur_uni, denoising, inpainting, make_operator,
    sr_averagepooling, sr_bicubic,
)
from deqir_jax.operators.closed_form import AveragePoolSR, Colorization, Denoising, Inpainting, WalshHadamardCS
from deqir_jax.operators.kernels import (
    bicubic_kernel, blur_matrix, gaussian_taps, strided_conv_matrix, uniform_kernel,
)
from deqir_jax.operators.layouts import (
    image_to_official_vector, official_vector_to_image, official_vector_to_y, y_to_official_vector,
)
from deqir_jax.operators.svd import SeparableSVDOperator, separable_operator

__all__ = [
    "Array", "ImageShape", "LinearOperator",
    "AveragePoolSR", "Colorization", "Denoising", "Inpainting", "WalshHadamardCS", "SeparableSVDOperator",
    "separable_operator", "bicubic_kernel", "blur_matrix", "gaussian_taps", "strided_conv_matrix",
    "uniform_kernel", "OFFICIAL_COLOR_WEIGHTS", "OFFICIAL_ZERO_THRESHOLD", "OPERATOR_NAMES", "builder_parameters",
    "make_operator", "colorization", "cs_walshhadamard", "deblur_aniso", "deblur_gauss", "deblur_uni",
    "denoising", "inpainting", "sr_averagepooling", "sr_bicubic", "image_to_official_vector",
    "official_vector_to_image", "official_vector_to_y", "y_to_official_vector",
]
