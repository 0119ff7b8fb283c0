"""Sequential DDIM + DDNM range/null-space sampler: the chain DeqIR solves in parallel (spec section 3).

One step per timestep, noisiest first (``lax.scan``)::

    eps    = eps_theta(x_t, t)[..., :C]
    x0     = (x_t - sqrt(1 - a) eps) / sqrt(a)
    x0_hat = x0 - A^+(A x0 - y)                 # = A^+ y + (I - A^+A) x0
    x_next = sqrt(b) x0_hat + c1 z + c2 eps,    c1 = sqrt(1-b) nw,  c2 = sqrt(1-b) sqrt(1-etw^2)

with a = abar(t), b = abar(next_t) (abar(-1) = 1) and ONE noise image z reused at every step (as DeqIR
does; nw = etw = 0 is DDIM(eta=0) + DDNM). Images are NHWC (float32 or float64); any batch size.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]


class SequentialResult(NamedTuple):
    """x0: (B, H, W, C) final sample; states: (T, B, H, W, C) x_{next_t[i]} after each step (last = x0);
    eps: (T, B, H, W, C) model predictions; x0_hat: (T, B, H, W, C) rectified x0 estimates."""

    x0: Array
    states: Array
    eps: Array
    x0_hat: Array


def step_weights(at_next: Array, nw: float, etw: float) -> tuple[Array, Array]:
    """Official DeqIR step weights: c1 = sqrt(1-b) nw (noise), c2 = sqrt(1-b) sqrt(1-etw^2) (eps)."""
    at_next = jnp.asarray(at_next)
    c1 = jnp.sqrt(1.0 - at_next) * jnp.asarray(nw, at_next.dtype)
    c2 = jnp.sqrt(1.0 - at_next) * jnp.sqrt(1.0 - jnp.asarray(etw, at_next.dtype) ** 2)
    return c1, c2


def sequential_sample(
    eps_fn: EpsFn,
    op: Any,
    x_T: Array,
    y: Array,
    z: Array,
    t: Array,
    at: Array,
    at_next: Array,
    *,
    nw: float = 0.0,
    etw: float = 0.0,
) -> SequentialResult:
    """Run the T-step DDIM + DDNM chain from x_T.

    eps_fn(x (B,H,W,C), t (B,) int32) -> (B,H,W,C') with C' >= C; op: operator with ``A`` / ``A_pinv`` on
    NHWC batches; x_T, z: (B, H, W, C); y: measurement in the operator layout (batch B);
    t, at, at_next: (T,) timesteps and abar values, noisiest first. Pure and jit-able.
    """
    if x_T.ndim != 4:
        raise ValueError(f"x_T must be an NHWC batch (B, H, W, C), got shape {tuple(x_T.shape)}")
    if z.shape != x_T.shape:
        raise ValueError(f"z must have the shape of x_T {tuple(x_T.shape)}, got {tuple(z.shape)}")
    dtype = jnp.promote_types(x_T.dtype, jnp.float32)
    t = jnp.asarray(t)
    at = jnp.asarray(at).astype(dtype)
    at_next = jnp.asarray(at_next).astype(dtype)
    if t.ndim != 1 or at.shape != t.shape or at_next.shape != t.shape:
        raise ValueError(
            f"t, at, at_next must be 1-D of equal length, got {t.shape}, {at.shape}, {at_next.shape}"
        )
    B, C = x_T.shape[0], x_T.shape[-1]
    c1, c2 = step_weights(at_next, nw, etw)
    z = z.astype(dtype)

    def step(x, inp):
        t_i, a, b, w1, w2 = inp
        eps = eps_fn(x, jnp.full((B,), t_i, jnp.int32))[..., :C].astype(dtype)
        x0 = (x - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)
        x0_hat = x0 - op.A_pinv(op.A(x0) - y).astype(dtype)
        x_next = jnp.sqrt(b) * x0_hat + w1 * z + w2 * eps
        return x_next, (x_next, eps, x0_hat)

    x0, (states, eps, x0_hat) = jax.lax.scan(
        step, x_T.astype(dtype), (t.astype(jnp.int32), at, at_next, c1, c2)
    )
    return SequentialResult(x0=x0, states=states, eps=eps, x0_hat=x0_hat)
