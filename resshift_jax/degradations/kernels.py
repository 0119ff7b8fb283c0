"""Random blur kernels of Real-ESRGAN (basicsr ``random_mixed_kernels`` / ``circular_lowpass_kernel``) in JAX.

Every kernel lives on a fixed ``grid_size`` x ``grid_size`` grid (odd; 21 for the first degradation of the
released configs) centred on the middle pixel. A kernel of (possibly traced) odd size ``k`` <= ``grid_size`` is
the same formula restricted to the central ``k`` x ``k`` window, zero elsewhere, normalised to sum 1 -- exactly
what basicsr does when it builds a ``k`` x ``k`` kernel and zero-pads it to the grid. Shapes are therefore
static and the kernel size can be drawn per sample inside ``jax.vmap``.

Orientation follows basicsr: ``kernel[row, col]`` with ``x`` = column offset and ``y`` = row offset, used as a
cross-correlation (``F.conv2d`` / ``cv2.filter2D``). The anisotropic covariance is ``U diag(sx^2, sy^2) U^T``
with ``U`` the rotation by ``theta``; the quadratic form ``q = [x y] Sigma^-1 [x y]^T`` gives

* Gaussian ``exp(-q / 2)``; generalised Gaussian ``exp(-q^beta / 2)``; plateau ``1 / (1 + q^beta)``;
* sinc (circular low-pass) ``cutoff * J1(cutoff * r) / (2 pi r)`` with ``cutoff^2 / (4 pi)`` at ``r = 0``.

``J1`` is computed with the trapezoidal rule on Bessel's integral
``J1(z) = (1 / 2pi) int_0^{2pi} cos(t - z sin t) dt``; for a periodic integrand the rule with ``N`` nodes is exact
up to ``J_{N-1}(z)``, which is below 1e-7 once ``N > |z| + 40``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def bessel_j1(z: jax.Array, max_abs_z: float) -> jax.Array:
    """Bessel function of the first kind, order 1, for ``|z| <= max_abs_z`` (float32, abs. error ~1e-6)."""
    nodes = int(math.ceil(max_abs_z)) + 48
    t = jnp.arange(nodes, dtype=jnp.float32) * (2.0 * math.pi / nodes)
    return jnp.mean(jnp.cos(t - z[..., None] * jnp.sin(t)), axis=-1)


def _check_grid(grid_size: int) -> None:
    if grid_size < 1 or grid_size % 2 != 1:
        raise ValueError(f"kernel grid size must be a positive odd integer, got {grid_size}")


def mesh_grid(grid_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(xx, yy) offsets from the centre, each (grid_size, grid_size); xx varies along columns."""
    _check_grid(grid_size)
    ax = np.arange(grid_size, dtype=np.float32) - grid_size // 2
    xx, yy = np.meshgrid(ax, ax)
    return xx, yy


def _window(grid_size: int, kernel_size) -> jax.Array:
    """1 inside the central kernel_size x kernel_size window (kernel_size odd, may be traced), else 0."""
    xx, yy = mesh_grid(grid_size)
    if kernel_size is None:
        return jnp.ones((grid_size, grid_size), jnp.float32)
    half = jnp.asarray(kernel_size) // 2
    inside = (jnp.abs(xx) <= half) & (jnp.abs(yy) <= half)
    return inside.astype(jnp.float32)


def _normalise(values: jax.Array, window: jax.Array) -> jax.Array:
    values = values * window
    return values / jnp.sum(values)


def _quadratic_form(grid_size: int, sigma_x, sigma_y, theta) -> jax.Array:
    """q = [x y] Sigma^-1 [x y]^T on the grid, Sigma = R(theta) diag(sx^2, sy^2) R(theta)^T."""
    xx, yy = mesh_grid(grid_size)
    c, s = jnp.cos(theta), jnp.sin(theta)
    ix, iy = 1.0 / jnp.square(sigma_x), 1.0 / jnp.square(sigma_y)
    a = c * c * ix + s * s * iy
    b = c * s * (ix - iy)
    d = s * s * ix + c * c * iy
    return a * xx * xx + 2.0 * b * xx * yy + d * yy * yy


def gaussian_kernel(grid_size: int, sigma_x, sigma_y, theta, kernel_size=None) -> jax.Array:
    """Anisotropic Gaussian (isotropic when sigma_x == sigma_y). Returns (grid, grid) float32 summing to 1."""
    q = _quadratic_form(grid_size, sigma_x, sigma_y, theta)
    return _normalise(jnp.exp(-0.5 * q), _window(grid_size, kernel_size))


def generalized_gaussian_kernel(grid_size: int, sigma_x, sigma_y, theta, beta, kernel_size=None) -> jax.Array:
    """exp(-q^beta / 2), normalised. Returns (grid, grid) float32."""
    q = _quadratic_form(grid_size, sigma_x, sigma_y, theta)
    return _normalise(jnp.exp(-0.5 * jnp.power(q, beta)), _window(grid_size, kernel_size))


def plateau_kernel(grid_size: int, sigma_x, sigma_y, theta, beta, kernel_size=None) -> jax.Array:
    """1 / (1 + q^beta), normalised. Returns (grid, grid) float32."""
    q = _quadratic_form(grid_size, sigma_x, sigma_y, theta)
    return _normalise(1.0 / (jnp.power(q, beta) + 1.0), _window(grid_size, kernel_size))


def circular_lowpass_kernel(grid_size: int, cutoff, kernel_size=None) -> jax.Array:
    """2-D sinc (circularly symmetric ideal low-pass) with cut-off in radians (pi = Nyquist), normalised."""
    xx, yy = mesh_grid(grid_size)
    r = np.sqrt(xx * xx + yy * yy)
    safe_r = np.where(r == 0, 1.0, r).astype(np.float32)
    max_arg = math.pi * float(r.max())
    values = cutoff * bessel_j1(cutoff * safe_r, max_arg) / (2.0 * math.pi * safe_r)
    values = jnp.where(r == 0, jnp.square(cutoff) / (4.0 * math.pi), values)
    return _normalise(values, _window(grid_size, kernel_size))


def delta_kernel(grid_size: int) -> jax.Array:
    """The identity (pulse) kernel: 1 at the centre."""
    _check_grid(grid_size)
    return jnp.zeros((grid_size, grid_size), jnp.float32).at[grid_size // 2, grid_size // 2].set(1.0)


@dataclasses.dataclass(frozen=True)
class BlurKernelSpec:
    """Static parameters of one random blur kernel draw (hashable, so usable as a jit static argument).

    grid_size: side of the zero-padded kernel (official ``blur_kernel_size``).
    kernel_sizes: odd sizes drawn uniformly (official ResShift: ``range(3, blur_kernel_size, 2)``).
    kernel_prob: probabilities of :data:`KERNEL_TYPES` (iso, aniso, generalized_iso, generalized_aniso,
        plateau_iso, plateau_aniso); need not be normalised.
    sinc_prob: probability of a sinc kernel instead (cut-off U(pi/3, pi) for size < 13, else U(pi/5, pi)).
    sigma_range: sigma_x and sigma_y are U(sigma_range); theta is U(-pi, pi) (aniso types only).
    betag_range / betap_range: shape of generalised Gaussian / plateau; beta = U(lo, 1) or U(1, hi), 50/50.
    """

    grid_size: int
    kernel_sizes: tuple[int, ...]
    kernel_prob: tuple[float, ...]
    sinc_prob: float
    sigma_range: tuple[float, float]
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)

    def __post_init__(self):
        _check_grid(self.grid_size)
        if not self.kernel_sizes or any(k % 2 != 1 or k < 1 or k > self.grid_size for k in self.kernel_sizes):
            raise ValueError(
                f"kernel_sizes must be odd and <= grid_size={self.grid_size}, got {self.kernel_sizes}"
            )
        if len(self.kernel_prob) != len(KERNEL_TYPES) or min(self.kernel_prob) < 0 or sum(self.kernel_prob) <= 0:
            raise ValueError(f"kernel_prob must be {len(KERNEL_TYPES)} non-negative weights, got {self.kernel_prob}")
        if not 0.0 <= self.sinc_prob <= 1.0:
            raise ValueError(f"sinc_prob must be in [0, 1], got {self.sinc_prob}")
        if not 0 < self.sigma_range[0] <= self.sigma_range[1]:
            raise ValueError(f"sigma_range must be 0 < lo <= hi, got {self.sigma_range}")


BLUR_UNIFORMS = 11  # uniforms consumed by one blur-kernel draw
SINC_UNIFORMS = 3  # uniforms consumed by one final-sinc draw


def _lerp(u, lo, hi):
    return lo + u * (hi - lo)


def choice_index(u, weights) -> jax.Array:
    """Index i with probability weights[i] / sum(weights), from one uniform u in [0, 1)."""
    w = np.asarray(weights, np.float64)
    edges = jnp.asarray(np.cumsum(w)[:-1] / w.sum(), jnp.float32)
    return jnp.sum(u >= edges).astype(jnp.int32)


def int_below(u, n: int) -> jax.Array:
    """Uniform integer in [0, n) from one uniform u in [0, 1)."""
    return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def _split_beta(u_side, u_value, beta_range) -> jax.Array:
    """basicsr's beta draw: U(lo, 1) or U(1, hi) with probability 1/2 each."""
    return jnp.where(u_side < 0.5, _lerp(u_value, beta_range[0], 1.0), _lerp(u_value, 1.0, beta_range[1]))


def sinc_cutoff(u, kernel_size) -> jax.Array:
    """Cut-off of a blur-stage sinc kernel: U(pi/3, pi) if kernel_size < 13 else U(pi/5, pi)."""
    lo = jnp.where(kernel_size < 13, math.pi / 3, math.pi / 5)
    return lo + u * (math.pi - lo)


def mixed_kernel_from_uniforms(u: jax.Array, spec: BlurKernelSpec, kernel_size) -> jax.Array:
    """``random_mixed_kernels`` (no sinc option) from 8 uniforms: type, sigma_x, sigma_y, theta, beta_g side /
    value, beta_p side / value. Returns (grid, grid)."""
    kind = choice_index(u[0], spec.kernel_prob)
    isotropic = (kind % 2) == 0
    sigma_x = _lerp(u[1], *spec.sigma_range)
    sigma_y = jnp.where(isotropic, sigma_x, _lerp(u[2], *spec.sigma_range))
    theta = jnp.where(isotropic, 0.0, _lerp(u[3], -math.pi, math.pi))
    g = spec.grid_size
    family = kind // 2
    q_beta = jnp.where(family == 1, _split_beta(u[4], u[5], spec.betag_range),
                       _split_beta(u[6], u[7], spec.betap_range))
    gauss = gaussian_kernel(g, sigma_x, sigma_y, theta, kernel_size)
    general = generalized_gaussian_kernel(g, sigma_x, sigma_y, theta, q_beta, kernel_size)
    plateau = plateau_kernel(g, sigma_x, sigma_y, theta, q_beta, kernel_size)
    return jnp.where(family == 0, gauss, jnp.where(family == 1, general, plateau))


def blur_kernel_from_uniforms(u: jax.Array, spec: BlurKernelSpec) -> jax.Array:
    """One blur kernel of a Real-ESRGAN stage from ``BLUR_UNIFORMS`` uniforms: size, sinc flag, cut-off, then the
    mixed-kernel draws. Returns (grid_size, grid_size) float32 summing to 1."""
    kernel_size = jnp.asarray(spec.kernel_sizes, jnp.int32)[int_below(u[0], len(spec.kernel_sizes))]
    sinc = circular_lowpass_kernel(spec.grid_size, sinc_cutoff(u[2], kernel_size), kernel_size)
    mixed = mixed_kernel_from_uniforms(u[3:11], spec, kernel_size)
    return jnp.where(u[1] < spec.sinc_prob, sinc, mixed)


def final_sinc_from_uniforms(u: jax.Array, grid_size: int, kernel_sizes: Sequence[int], prob: float) -> jax.Array:
    """The final sinc filter from ``SINC_UNIFORMS`` uniforms: with probability ``prob`` a sinc (cut-off
    U(pi/3, pi), size from kernel_sizes) zero-padded to ``grid_size``, else the pulse. (grid, grid)."""
    sizes = tuple(kernel_sizes)
    kernel_size = jnp.asarray(sizes, jnp.int32)[int_below(u[1], len(sizes))]
    sinc = circular_lowpass_kernel(grid_size, _lerp(u[2], math.pi / 3, math.pi), kernel_size)
    return jnp.where(u[0] < prob, sinc, delta_kernel(grid_size))


def sample_mixed_kernel(key: jax.Array, spec: BlurKernelSpec, kernel_size) -> jax.Array:
    """One ``random_mixed_kernels`` draw of size ``kernel_size`` on ``spec.grid_size`` (no sinc option)."""
    return mixed_kernel_from_uniforms(jax.random.uniform(key, (8,)), spec, kernel_size)


def sample_blur_kernel(key: jax.Array, spec: BlurKernelSpec) -> jax.Array:
    """One blur kernel of a Real-ESRGAN degradation stage: random size, sinc with ``sinc_prob`` else mixed."""
    return blur_kernel_from_uniforms(jax.random.uniform(key, (BLUR_UNIFORMS,)), spec)


def sample_final_sinc_kernel(
    key: jax.Array, grid_size: int, kernel_sizes: Sequence[int], prob: float
) -> jax.Array:
    """The final sinc filter (see :func:`final_sinc_from_uniforms`). Returns (grid_size, grid_size)."""
    return final_sinc_from_uniforms(jax.random.uniform(key, (SINC_UNIFORMS,)), grid_size, kernel_sizes, prob)
