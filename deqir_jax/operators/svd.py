"""The SVD machinery of the separable operators (SR by convolution, deblurring).

:class:`SeparableSVDOperator` applies a map that acts on rows and columns separately through the SVDs of
its small 1-D (H x H, W x W) factors; :func:`separable_operator` builds one from those factors. Nothing
here builds a dense (CHW x CHW) matrix.

Official quirks reproduced with ``official=True`` (the builders in :mod:`deqir_jax.operators.builders`):

1. Singular values of the 1-D matrices below ``3e-2`` are zeroed. ``A`` is the *truncated* operator and
   the measurement is made with it; ``A_pinv`` inverts the kept values only.
2. ``Deblurring`` / ``Deblurring2D`` pair their singular values with the wrong coefficients: the sorted
   singular values are tiled channel-major (``repeat(1, 3)``) but the coefficients are interleaved
   pixel-major, so coefficient ``perm[k]`` of channel ``c`` is scaled by ``sorted_s[(C*k + c) % HW]``
   instead of ``sorted_s[k]``. The official ``A`` is therefore *not* the blur (it differs per channel),
   and it depends on the tie order of ``torch.sort`` (pass the official ``singular_perm`` to match it
   bit for bit; by default a stable descending sort is used). ``SRConv`` is not affected.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import struct

from deqir_jax.operators.base import HIGHEST, Array, ImageShape, LinearOperator, _check_perm


@struct.dataclass
class SeparableSVDOperator(LinearOperator):
    """A linear map acting on rows and columns separately, through the SVDs of its 1-D factors.

    With 1-D factors ``A_r = U_r S_r V_rᵀ`` (rows) and ``A_c = U_c S_c V_cᵀ`` (columns), per channel::

        A x   = U_r (mult ⊙ (V_rᵀ X V_c)) U_cᵀ
        A⁺ y  = V_r (inv_mult ⊙ (U_rᵀ Y U_c)) V_cᵀ
        Aᵀ y  = V_r (mult ⊙ (U_rᵀ Y U_c)) V_cᵀ
        P x   = V_r (1[inv_mult ≠ 0] ⊙ (V_rᵀ X V_c)) V_cᵀ

    ``mult`` / ``inv_mult`` are (kr, kc, C): normally ``s_r ⊗ s_c`` (truncated) and its inverse on the
    kept entries; the official ``Deblurring`` quirk puts permuted singular values there instead.
    y: (..., Hy, Wy, C).
    """

    u_rows: Array  # (Hy, kr)
    v_rows: Array  # (H, kr)
    u_cols: Array  # (Wy, kc)
    v_cols: Array  # (W, kc)
    mult: Array  # (kr, kc, C) multipliers used by A and Aᵀ
    inv_mult: Array  # (kr, kc, C) multipliers used by A⁺ (0 where nothing is inverted)
    singular_values: Array  # official ``singulars()`` vector
    image_shape: ImageShape = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False, default="separable")

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (int(self.u_rows.shape[0]), int(self.u_cols.shape[0]), self.image_shape[2])

    @property
    def y_layout(self) -> str:
        return "image"

    def _to_coef(self, x, left, right):
        return jnp.einsum("...hwc,ha,wb->...abc", x, left, right, precision=HIGHEST)

    def _from_coef(self, coef, left, right):
        return jnp.einsum("...abc,ha,wb->...hwc", coef, left, right, precision=HIGHEST)

    def _A(self, x):
        return self._from_coef(self._to_coef(x, self.v_rows, self.v_cols) * self.mult, self.u_rows, self.u_cols)

    def _A_pinv(self, y):
        coef = self._to_coef(y, self.u_rows, self.u_cols) * self.inv_mult
        return self._from_coef(coef, self.v_rows, self.v_cols)

    def _At(self, y):
        coef = self._to_coef(y, self.u_rows, self.u_cols) * self.mult
        return self._from_coef(coef, self.v_rows, self.v_cols)

    def _project(self, x):
        keep = (self.inv_mult != 0).astype(self.inv_mult.dtype)
        return self._from_coef(self._to_coef(x, self.v_rows, self.v_cols) * keep, self.v_rows, self.v_cols)

    def singulars(self):
        return self.singular_values


def _svd(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of a small float32 matrix, computed in float64: (U (m, r), s (r,), V (n, r)) float32."""
    u, s, vt = np.linalg.svd(np.asarray(mat, np.float64), full_matrices=False)
    return u.astype(np.float32), s.astype(np.float32), vt.T.astype(np.float32)


def _truncate(s: np.ndarray, threshold: float) -> np.ndarray:
    s = s.copy()
    s[s < threshold] = 0
    return s


def _safe_inverse(m: np.ndarray) -> np.ndarray:
    out = np.zeros_like(m)
    nz = m != 0
    out[nz] = np.float32(1.0) / m[nz]
    return out


def separable_operator(
    name: str,
    image_shape: ImageShape,
    row_matrix: np.ndarray,
    col_matrix: np.ndarray,
    official_row_matrix: np.ndarray,
    official_col_matrix: np.ndarray,
    official: bool,
    zero_threshold: float,
    sort_singulars: bool,
    singular_perm: Any,
) -> SeparableSVDOperator:
    """Build a :class:`SeparableSVDOperator` from 1-D factors (see the builders for the conventions)."""
    c = image_shape[2]
    rows = official_row_matrix if official else row_matrix
    cols = official_col_matrix if official else col_matrix
    u_r, s_r, v_r = _svd(rows)
    u_c, s_c, v_c = _svd(cols)
    s_r_cut, s_c_cut = _truncate(s_r, zero_threshold), _truncate(s_c, zero_threshold)
    cut = np.outer(s_r_cut, s_c_cut).astype(np.float32)  # (kr, kc), float32 products as torch.matmul

    if not official:
        mult = np.repeat(np.outer(s_r, s_c).astype(np.float32)[..., None], c, axis=-1)
        inv_mult = np.repeat(_safe_inverse(cut)[..., None], c, axis=-1)
        singular_values = mult.reshape(-1)
    elif not sort_singulars:  # SRConv: coefficient (i, j) scaled by s_i s_j, interleaved per channel.
        mult = np.repeat(cut[..., None], c, axis=-1)
        inv_mult = _safe_inverse(mult)
        singular_values = mult.reshape(-1)
    else:
        mult, singular_values = _official_deblur_multipliers(cut, c, singular_perm)
        inv_mult = _safe_inverse(mult)

    return SeparableSVDOperator(
        u_rows=jnp.asarray(u_r),
        v_rows=jnp.asarray(v_r),
        u_cols=jnp.asarray(u_c),
        v_cols=jnp.asarray(v_c),
        mult=jnp.asarray(mult, jnp.float32),
        inv_mult=jnp.asarray(inv_mult, jnp.float32),
        singular_values=jnp.asarray(singular_values, jnp.float32),
        image_shape=image_shape,
        name=name,
    )


def _official_deblur_multipliers(cut: np.ndarray, c: int, singular_perm: Any) -> tuple[np.ndarray, np.ndarray]:
    """Official ``Deblurring`` / ``Deblurring2D`` (quirk 2): the sorted singular values, tiled channel-major,
    against the pixel-major interleaved coefficients.

    cut: (kr, kc) truncated singular value products; returns ``mult`` (kr, kc, c) and the official
    ``singulars()`` vector (c * kr * kc,).
    """
    kr, kc = cut.shape
    n = kr * kc
    flat = cut.reshape(-1)
    if singular_perm is None:
        perm = np.argsort(-flat, kind="stable")
    else:
        perm = _check_perm(singular_perm, n, "singular_perm")
    sorted_s = flat[perm]
    k = np.arange(n)
    mult_flat = np.zeros((n, c), np.float32)
    for ch in range(c):
        mult_flat[perm, ch] = sorted_s[(c * k + ch) % n]
    return mult_flat.reshape(kr, kc, c), np.tile(sorted_s, c)
