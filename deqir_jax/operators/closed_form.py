"""Operators with closed forms: block-mean SR, inpainting, colorization, denoising, Walsh-Hadamard CS.

Interface and layouts: :mod:`deqir_jax.operators.base`. Built by :mod:`deqir_jax.operators.builders`.
"""
from __future__ import annotations

import math
from typing import ClassVar

import jax.numpy as jnp
import numpy as np
from flax import struct

from deqir_jax.operators.base import HIGHEST, Array, ImageShape, LinearOperator, _lead


@struct.dataclass
class AveragePoolSR(LinearOperator):
    """SR by block averaging (official ``SuperResolution``): y = means of factor x factor blocks.

    ``A⁺`` replicates each mean over its block, ``Aᵀ = A⁺ / factor²``; singular values are all
    ``1 / factor``. y: (..., H/f, W/f, C).
    """

    image_shape: ImageShape = struct.field(pytree_node=False)
    factor: int = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False, default="sr_averagepooling")

    @property
    def y_shape(self) -> tuple[int, ...]:
        h, w, c = self.image_shape
        return (h // self.factor, w // self.factor, c)

    @property
    def y_layout(self) -> str:
        return "image"

    def _A(self, x):
        h, w, c = self.y_shape
        f = self.factor
        blocks = x.reshape(_lead(x, 3) + (h, f, w, f, c))
        return blocks.mean(axis=(-4, -2))

    def _A_pinv(self, y):
        h, w, c = self.y_shape
        f = self.factor
        up = jnp.broadcast_to(y[..., :, None, :, None, :], _lead(y, 3) + (h, f, w, f, c))
        return up.reshape(_lead(y, 3) + self.image_shape)

    def _At(self, y):
        return self._A_pinv(y) / (self.factor**2)

    def singulars(self):
        return jnp.full((self.y_dim,), 1.0 / self.factor, jnp.float32)


@struct.dataclass
class Inpainting(LinearOperator):
    """Pixel masking (official ``Inpainting``); ``mask`` is (H, W, C), 1 = observed.

    y: (..., m) the observed entries of the NHWC-flattened image, in increasing index order (= the
    official layout, index ``pixel * C + channel``). ``A⁺ = Aᵀ`` scatters them back into zeros;
    ``P x = mask * x``.
    """

    mask: Array  # (H, W, C) float32, 1 = observed
    kept_indices: Array  # (m,) int32 indices into the flattened (H * W * C) image
    image_shape: ImageShape = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False, default="inpainting")
    picture_is_full_size: ClassVar[bool] = True  # a given picture is the masked image

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (int(self.kept_indices.shape[0]),)

    @property
    def y_layout(self) -> str:
        return "vector"

    def _A(self, x):
        flat = x.reshape(_lead(x, 3) + (-1,))
        return jnp.take(flat, self.kept_indices, axis=-1)

    def _A_pinv(self, y):
        lead = _lead(y, 1)
        flat = jnp.zeros(lead + (int(np.prod(self.image_shape)),), y.dtype)
        flat = flat.at[..., self.kept_indices].set(y)
        return flat.reshape(lead + self.image_shape)

    def _At(self, y):
        return self._A_pinv(y)

    def _project(self, x):
        return x * self.mask.astype(x.dtype)

    def singulars(self):
        return jnp.ones((self.y_dim,), jnp.float32)


@struct.dataclass
class Colorization(LinearOperator):
    """Gray-scale conversion (official ``Colorization``): y = sum_c w_c x_c, w = (0.3333, 0.3334, 0.3333).

    y: (..., H, W, 1). ``A⁺ y = w y / |w|²``, ``Aᵀ y = w y``; singular values ``|w|`` per pixel.
    """

    weights: Array  # (C,)
    image_shape: ImageShape = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False, default="colorization")
    picture_is_full_size: ClassVar[bool] = True  # a given picture is the grey image (as RGB)

    @property
    def y_shape(self) -> tuple[int, ...]:
        h, w, _ = self.image_shape
        return (h, w, 1)

    @property
    def y_layout(self) -> str:
        return "image"

    def _A(self, x):
        return jnp.einsum("...c,c->...", x, self.weights, precision=HIGHEST)[..., None]

    def _A_pinv(self, y):
        return y * (self.weights / jnp.sum(self.weights**2))

    def _At(self, y):
        return y * self.weights

    def singulars(self):
        h, w, _ = self.image_shape
        return jnp.full((h * w,), jnp.sqrt(jnp.sum(self.weights**2)), jnp.float32)


@struct.dataclass
class Denoising(LinearOperator):
    """Identity (official ``Denoising``). y: (..., H, W, C)."""

    image_shape: ImageShape = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False, default="denoising")

    @property
    def y_shape(self) -> tuple[int, ...]:
        return tuple(self.image_shape)

    @property
    def y_layout(self) -> str:
        return "image"

    def _A(self, x):
        return x

    def _A_pinv(self, y):
        return y

    def _At(self, y):
        return y

    def _project(self, x):
        return x

    def singulars(self):
        return jnp.ones((self.y_dim,), jnp.float32)


@struct.dataclass
class WalshHadamardCS(LinearOperator):
    """Compressed sensing with a permuted orthonormal Walsh-Hadamard transform (``WalshHadamardCS``).

    Per channel, the (Sylvester-ordered) WHT of the flattened H*W image, divided by sqrt(H*W), is
    taken; coefficients are reordered by ``perm`` (coefficient k of the result is WHT entry
    ``perm[k]``), interleaved pixel-major (index ``k * C + c``) and the first ``m = C*H*W // ratio``
    kept. y: (..., m), identical to the official layout. Because H and W are powers of two, the
    flattened WHT is ``Had_H X Had_W`` and is applied along rows and columns.
    """

    perm: Array  # (H*W,) int32
    inv_perm: Array  # (H*W,) int32
    had_rows: Array  # (H, H) ±1
    had_cols: Array  # (W, W) ±1
    image_shape: ImageShape = struct.field(pytree_node=False)
    num_measurements: int = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False, default="cs_walshhadamard")

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.num_measurements,)

    @property
    def y_layout(self) -> str:
        return "vector"

    def _wht(self, x):
        h, w, _ = self.image_shape
        out = jnp.einsum("ph,...hwc,qw->...pqc", self.had_rows, x, self.had_cols, precision=HIGHEST)
        return out / math.sqrt(h * w)

    def _A(self, x):
        h, w, c = self.image_shape
        lead = _lead(x, 3)
        coef = self._wht(x).reshape(lead + (h * w, c))
        coef = jnp.take(coef, self.perm, axis=-2).reshape(lead + (h * w * c,))
        return coef[..., : self.num_measurements]

    def _A_pinv(self, y):
        h, w, c = self.image_shape
        lead = _lead(y, 1)
        full = jnp.zeros(lead + (h * w * c,), y.dtype).at[..., : self.num_measurements].set(y)
        coef = jnp.take(full.reshape(lead + (h * w, c)), self.inv_perm, axis=-2)
        return self._wht(coef.reshape(lead + self.image_shape))

    def _At(self, y):
        return self._A_pinv(y)

    def singulars(self):
        return jnp.ones((self.num_measurements,), jnp.float32)
