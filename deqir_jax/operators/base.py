"""The operator interface every DeqIR degradation shares (:class:`LinearOperator`) and its shape checks.

Every operator is a frozen ``flax.struct`` dataclass: its arrays are pytree leaves and its sizes are
static, so an operator can be passed as an argument to a jitted function, closed over, or used under
``jax.vmap``. Images are NHWC float in [-1, 1] with any number of leading (batch) axes, including none
(as seen from inside ``vmap``). All operators share one interface::

    op.A(x)        (..., H, W, C)  -> (..., *op.y_shape)     measurement
    op.A_pinv(y)   (..., *y_shape) -> (..., H, W, C)         pseudo-inverse A⁺
    op.At(y)       (..., *y_shape) -> (..., H, W, C)         transpose Aᵀ
    op.project(x)  = A⁺A x   (projection onto the row space, P)
    op.null(x)     = x - A⁺A x  (null-space part, I - P)
    op.singulars() singular values, in the order of the official ``singulars()``
    op.y_shape     per-image measurement shape (no batch axis)
    op.measurement_image(y)        a picture of y (what a person looks at; written as measurement.png)
    op.measurement_from_image(img) y from such a picture (a given low-resolution / grey / masked image)

Measurement layouts (``y_shape``): image-like measurements keep NHWC (SR: (h, w, C); deblur, denoising:
(H, W, C); colorization: (H, W, 1)). Inpainting and Walsh-Hadamard CS return flat vectors (m,) that are
*identical* to the official layout (see :mod:`deqir_jax.operators.layouts`).
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ImageShape = tuple[int, int, int]

HIGHEST = jax.lax.Precision.HIGHEST


class LinearOperator:
    """Interface and shape checks shared by every operator (a plain mixin, not a pytree itself)."""

    image_shape: ImageShape
    name: str

    # -- to be provided by each operator ------------------------------------------------------------
    @property
    def y_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def y_layout(self) -> str:
        """``"image"``: y is (..., h, w, c) (official layout: channel-major); ``"vector"``: official."""
        raise NotImplementedError

    def _A(self, x: Array) -> Array:
        raise NotImplementedError

    def _A_pinv(self, y: Array) -> Array:
        raise NotImplementedError

    def _At(self, y: Array) -> Array:
        raise NotImplementedError

    def _project(self, x: Array) -> Array:
        return self._A_pinv(self._A(x))

    def singulars(self) -> Array:
        raise NotImplementedError

    # -- public, shape-checked ----------------------------------------------------------------------
    def A(self, x: Array) -> Array:
        """Measurement ``A x``: (..., H, W, C) -> (..., *y_shape)."""
        return self._A(self._check_x(x))

    def A_pinv(self, y: Array) -> Array:
        """Pseudo-inverse ``A⁺ y``: (..., *y_shape) -> (..., H, W, C)."""
        return self._A_pinv(self._check_y(y))

    def At(self, y: Array) -> Array:
        """Transpose ``Aᵀ y``: (..., *y_shape) -> (..., H, W, C)."""
        return self._At(self._check_y(y))

    def project(self, x: Array) -> Array:
        """Row-space projection ``P x = A⁺ A x``: (..., H, W, C) -> same."""
        return self._project(self._check_x(x))

    def null(self, x: Array) -> Array:
        """Null-space component ``(I - A⁺A) x``: (..., H, W, C) -> same."""
        x = self._check_x(x)
        return x - self._project(x)

    @property
    def y_dim(self) -> int:
        return int(np.prod(self.y_shape))

    # -- pictures of the measurement ----------------------------------------------------------------
    # True where a picture of y has the image's full size (the grey image of colorization, the masked
    # image of inpainting): y is then A applied to that picture.
    picture_is_full_size: ClassVar[bool] = False

    def measurement_image(self, y: Array) -> np.ndarray:
        """A picture of y (batch 1): y itself for image measurements (grey ones repeated to RGB), else A⁺ y.

        (1, *y_shape) -> (1, h, w, 3) numpy, [-1, 1].
        """
        if self.y_layout == "image":
            arr = np.asarray(y)
            return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr
        return np.asarray(self.A_pinv(y))

    def measurement_from_image(self, img: Any) -> Array:
        """A given picture of the measurement (1, h, w, C) -> y (1, *y_shape) in this operator's layout.

        SR: the low-resolution image; deblur: the blurred image; colorization: the grey image; inpainting:
        the masked image. ValueError (one line) for a picture of the wrong size or an operator whose
        measurements are not pictures (compressed sensing).
        """
        if self.y_layout == "image" and self.y_shape[-1] == img.shape[-1]:
            _check_picture_size(self, img, self.y_shape)
            return jnp.asarray(img)
        if self.picture_is_full_size:
            _check_picture_size(self, img, self.image_shape)
            return self.A(jnp.asarray(img))
        raise ValueError(f"{self.name} measurements cannot be given as an image; give the clean image instead")

    def _check_x(self, x: Any) -> Array:
        x = jnp.asarray(x)
        if x.ndim < 3 or tuple(x.shape[-3:]) != tuple(self.image_shape):
            raise ValueError(
                f"{self.name}: expected images of shape (..., {', '.join(map(str, self.image_shape))}) "
                f"(NHWC), got {tuple(x.shape)}"
            )
        return x

    def _check_y(self, y: Any) -> Array:
        y = jnp.asarray(y)
        n = len(self.y_shape)
        if y.ndim < n or tuple(y.shape[y.ndim - n:]) != tuple(self.y_shape):
            raise ValueError(
                f"{self.name}: expected measurements of shape (..., {', '.join(map(str, self.y_shape))}), "
                f"got {tuple(y.shape)}"
            )
        return y


def _lead(a: Array, n: int) -> tuple[int, ...]:
    return tuple(a.shape[: a.ndim - n])


def _check_image_shape(image_size: int | Sequence[int], channels: int) -> ImageShape:
    if isinstance(image_size, (int, np.integer)):
        h = w = int(image_size)
    else:
        size = tuple(int(s) for s in image_size)
        if len(size) != 2:
            raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}")
        h, w = size
    if h < 1 or w < 1 or channels < 1:
        raise ValueError(f"image size and channels must be positive, got {(h, w)} and {channels}")
    return h, w, int(channels)


def _check_picture_size(op: LinearOperator, img: Any, expected: Sequence[int]) -> None:
    if tuple(img.shape[1:3]) != tuple(expected[:2]):
        raise ValueError(
            f"measurement image is {img.shape[1]}x{img.shape[2]}, {op.name} expects {expected[0]}x{expected[1]}"
        )


def _check_perm(perm: Any, n: int, what: str) -> np.ndarray:
    perm = np.asarray(perm).reshape(-1)
    if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
        raise ValueError(f"{what} must be a permutation of range({n}), got an array of shape {perm.shape}")
    return perm.astype(np.int64)
