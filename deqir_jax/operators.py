"""Linear degradation operators of DeqIR / DDNM / DDRM, in pure JAX.

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

Measurement layouts (``y_shape``): image-like measurements keep NHWC (SR: (h, w, C); deblur, denoising:
(H, W, C); colorization: (H, W, 1)). Inpainting and Walsh-Hadamard CS return flat vectors (m,) that are
*identical* to the official layout, because the official code indexes those in the pixel-major
interleaved order ``pixel * C + channel``, which is the NHWC flattening. Use
:func:`y_to_official_vector` / :func:`official_vector_to_y` to go to and from the official flat
``(B, y_dim)`` vectors (channel-major for the image-like ones).

Nothing here builds a dense (CHW x CHW) matrix: conv operators are separable, so they are applied with
the SVDs of their small 1-D (H x H, W x W) matrices along rows and columns; the others are closed forms.

Official quirks reproduced by default (``official=True``), see the docstrings of the builders:

1. Deblurring builds its 1-D matrices with taps ``j in [i - k//2, i + k//2)``: for odd kernels the last
   tap is dropped (5 -> 4, 9 -> 8 taps). Zero padding.
2. Singular values of the 1-D matrices below ``3e-2`` are zeroed. ``A`` is the *truncated* operator and
   the measurement is made with it; ``A_pinv`` inverts the kept values only.
3. ``Deblurring`` / ``Deblurring2D`` pair their singular values with the wrong coefficients: the sorted
   singular values are tiled channel-major (``repeat(1, 3)``) but the coefficients are interleaved
   pixel-major, so coefficient ``perm[k]`` of channel ``c`` is scaled by ``sorted_s[(C*k + c) % HW]``
   instead of ``sorted_s[k]``. The official ``A`` is therefore *not* the blur (it differs per channel),
   and it depends on the tie order of ``torch.sort`` (pass the official ``singular_perm`` to match it
   bit for bit; by default a stable descending sort is used). ``SRConv`` is not affected.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array
ImageShape = tuple[int, int, int]

OFFICIAL_ZERO_THRESHOLD = 3e-2
OFFICIAL_COLOR_WEIGHTS = (0.3333, 0.3334, 0.3333)
_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------------------
# Shared interface


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


# --------------------------------------------------------------------------------------------------
# Closed-form operators


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

    @property
    def y_shape(self) -> tuple[int, ...]:
        h, w, _ = self.image_shape
        return (h, w, 1)

    @property
    def y_layout(self) -> str:
        return "image"

    def _A(self, x):
        return jnp.einsum("...c,c->...", x, self.weights, precision=_HIGHEST)[..., None]

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
        out = jnp.einsum("ph,...hwc,qw->...pqc", self.had_rows, x, self.had_cols, precision=_HIGHEST)
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


# --------------------------------------------------------------------------------------------------
# Separable SVD operators (SR by convolution, deblurring)


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
        return jnp.einsum("...hwc,ha,wb->...abc", x, left, right, precision=_HIGHEST)

    def _from_coef(self, coef, left, right):
        return jnp.einsum("...abc,ha,wb->...hwc", coef, left, right, precision=_HIGHEST)

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


# --------------------------------------------------------------------------------------------------
# Kernels and 1-D matrices (NumPy, construction time)


def gaussian_kernel(kernel_size: int, sigma: float) -> np.ndarray:
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


def _check_perm(perm: Any, n: int, what: str) -> np.ndarray:
    perm = np.asarray(perm).reshape(-1)
    if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
        raise ValueError(f"{what} must be a permutation of range({n}), got an array of shape {perm.shape}")
    return perm.astype(np.int64)


def _separable_operator(
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
    kr, kc = s_r.shape[0], s_c.shape[0]
    cut = np.outer(s_r_cut, s_c_cut).astype(np.float32)  # (kr, kc), float32 products as torch.matmul

    if not official:
        mult = np.repeat(np.outer(s_r, s_c).astype(np.float32)[..., None], c, axis=-1)
        inv_mult = np.repeat(_safe_inverse(cut)[..., None], c, axis=-1)
        singular_values = mult.reshape(-1)
    elif not sort_singulars:  # SRConv: coefficient (i, j) scaled by s_i s_j, interleaved per channel.
        mult = np.repeat(cut[..., None], c, axis=-1)
        inv_mult = _safe_inverse(mult)
        singular_values = mult.reshape(-1)
    else:  # Deblurring / Deblurring2D: sorted singulars tiled channel-major against interleaved coefficients.
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
        mult = mult_flat.reshape(kr, kc, c)
        inv_mult = _safe_inverse(mult)
        singular_values = np.tile(sorted_s, c)

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


# --------------------------------------------------------------------------------------------------
# Builders


def sr_averagepooling(image_size: int | Sequence[int], factor: int, channels: int = 3) -> AveragePoolSR:
    """Block-mean SR by ``factor`` (official ``SuperResolution`` and the non-SVD ``AdaptiveAvgPool2d``)."""
    shape = _check_image_shape(image_size, channels)
    if int(factor) != factor or factor < 1:
        raise ValueError(f"SR factor must be a positive integer, got {factor!r}")
    factor = int(factor)
    if shape[0] % factor or shape[1] % factor:
        raise ValueError(f"image size {shape[:2]} is not divisible by the SR factor {factor}")
    return AveragePoolSR(image_shape=shape, factor=factor)


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
    if int(factor) != factor or factor < 1:
        raise ValueError(f"SR factor must be a positive integer, got {factor!r}")
    factor = int(factor)
    if shape[0] % factor or shape[1] % factor:
        raise ValueError(f"image size {shape[:2]} is not divisible by the SR factor {factor}")
    kernel = bicubic_kernel(factor)
    rows = strided_conv_matrix(kernel, shape[0], factor)
    cols = strided_conv_matrix(kernel, shape[1], factor)
    return _separable_operator(
        "sr_bicubic", shape, rows, cols, rows, cols, official, zero_threshold, sort_singulars=False,
        singular_perm=None,
    )


def _explicit_kernel(kernel: Any, what: str) -> np.ndarray:
    """An explicitly given 1-D kernel (K,) as float32 taps; ValueError for anything else."""
    taps = np.asarray(kernel, dtype=np.float32)
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
    for k in (kernel_rows, kernel_cols):
        if k.shape[0] // 2 >= min(shape[:2]):
            raise ValueError(f"kernel of {k.shape[0]} taps is too large for an image of size {shape[:2]}")
    return _separable_operator(
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


_DEBLUR_DOC = """

    ``official=True`` (default) reproduces the official ``Deblurring`` exactly: the last tap of odd
    kernels is dropped, 1-D singular values ``< zero_threshold`` are zeroed (A is truncated and the
    measurement is made with it), and the sorted singular values are paired with the wrong coefficients
    (module docstring, quirk 3). ``singular_perm`` (H*W,) is the official ``_perm`` (torch's tie order of
    the descending sort); without it a stable sort is used, which gives a different (equally arbitrary)
    operator. ``official=False``: all taps, A = the exact zero-padded blur, ``A_pinv`` / ``project`` use
    the truncated singular values paired correctly. An explicit 1-D ``kernel`` (K,) (the tensor the
    official ``Deblurring`` class is given) replaces the one built from the size / sigma arguments.
"""


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
    k = gaussian_kernel(kernel_size, sigma) if kernel is None else _explicit_kernel(kernel, "kernel")
    return _deblur("deblur_gauss", shape, k, k, official, zero_threshold, singular_perm)


deblur_gauss.__doc__ = "Gaussian deblurring (official: 5 taps, sigma 10), same kernel on rows and columns." + _DEBLUR_DOC


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
    k = uniform_kernel(kernel_size) if kernel is None else _explicit_kernel(kernel, "kernel")
    return _deblur("deblur_uni", shape, k, k, official, zero_threshold, singular_perm)


deblur_uni.__doc__ = "Uniform (box) deblurring (official: 9 taps), same kernel on rows and columns." + _DEBLUR_DOC


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
    k1 = gaussian_kernel(kernel_size, sigma1) if kernel1 is None else _explicit_kernel(kernel1, "kernel1")
    k2 = gaussian_kernel(kernel_size, sigma2) if kernel2 is None else _explicit_kernel(kernel2, "kernel2")
    return _deblur("deblur_aniso", shape, k1, k2, official, zero_threshold, singular_perm)


deblur_aniso.__doc__ = (
    "Anisotropic Gaussian deblurring (official ``Deblurring2D``): ``sigma1`` vertical, ``sigma2`` horizontal"
    " (explicit ``kernel1`` / ``kernel2`` replace the Gaussians)." + _DEBLUR_DOC
)


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


def make_operator(name: str, image_size: int | Sequence[int], **params: Any) -> LinearOperator:
    """Build the operator called ``name`` (the official ``--deg`` names) for ``image_size`` (int or (H, W)).

    Parameters per name: ``sr_averagepooling(factor)``, ``sr_bicubic(factor, official, zero_threshold)``,
    ``deblur_gauss(kernel_size=5, sigma=10, official, zero_threshold, singular_perm, kernel)``,
    ``deblur_uni(kernel_size=9, ..., kernel)``, ``deblur_aniso(kernel_size=9, sigma1=1, sigma2=20, ...,
    kernel1, kernel2)`` (an explicit 1-D ``kernel`` replaces the built one),
    ``inpainting(mask)``, ``colorization(weights)``, ``cs_walshhadamard(ratio=2, perm, seed)``,
    ``denoising()``; every builder also takes ``channels`` (3).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown degradation {name!r}; expected one of {', '.join(OPERATOR_NAMES)}")
    builder = _BUILDERS[name]
    allowed = [p for p in inspect.signature(builder).parameters if p != "image_size"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {unknown}; allowed: {allowed}")
    return builder(image_size, **params)


# --------------------------------------------------------------------------------------------------
# Layout conversions


def y_to_official_vector(op: LinearOperator, y: Array) -> Array:
    """Measurement in this module's layout (..., *y_shape) -> the official flat vector (..., y_dim)."""
    y = op._check_y(y)
    if op.y_layout == "vector":
        return y
    lead = _lead(y, 3)
    return jnp.moveaxis(y, -1, -3).reshape(lead + (op.y_dim,))


def official_vector_to_y(op: LinearOperator, vec: Array) -> Array:
    """Official flat measurement (..., y_dim) -> this module's layout (..., *y_shape)."""
    vec = jnp.asarray(vec)
    if vec.ndim < 1 or vec.shape[-1] != op.y_dim:
        raise ValueError(f"{op.name}: expected official measurement vectors (..., {op.y_dim}), got {tuple(vec.shape)}")
    if op.y_layout == "vector":
        return vec
    h, w, c = op.y_shape
    return jnp.moveaxis(vec.reshape(_lead(vec, 1) + (c, h, w)), -3, -1)


def image_to_official_vector(x: Array) -> Array:
    """NHWC images (..., H, W, C) -> official flattened NCHW vectors (..., C*H*W)."""
    x = jnp.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"expected images (..., H, W, C), got shape {tuple(x.shape)}")
    return jnp.moveaxis(x, -1, -3).reshape(_lead(x, 3) + (-1,))


def official_vector_to_image(vec: Array, image_shape: Sequence[int]) -> Array:
    """Official flattened NCHW vectors (..., C*H*W) -> NHWC images (..., H, W, C)."""
    vec = jnp.asarray(vec)
    h, w, c = (int(s) for s in image_shape)
    if vec.ndim < 1 or vec.shape[-1] != h * w * c:
        raise ValueError(f"expected vectors (..., {h * w * c}) for images {(h, w, c)}, got {tuple(vec.shape)}")
    return jnp.moveaxis(vec.reshape(_lead(vec, 1) + (c, h, w)), -3, -1)
