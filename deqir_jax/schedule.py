"""DeqIR noise schedule and timestep sequences.

Everything here is set-up time arithmetic: the builders return NumPy arrays (constants of the jitted
samplers), ``compute_alpha`` is a jit-able gather.

* betas: ``np.linspace(1e-4, 2e-2, 1000)`` in float64, cast to float32.
* alpha-bar: ``cumprod(1 - [0, betas])``. The official code takes it with ``torch.cumprod`` on float32
  tensors; on CPU PyTorch accumulates float32 products in float64 and rounds every output to float32,
  which is what :func:`alphas_cumprod` does (bit-identical to the official values).
* ``abar_padded[t + 1] = abar(t)`` with ``abar(-1) = 1`` (the x_0 "timestep").
* States are ordered noisiest first: ``t[0]`` is the time of x_T, ``next_t[i]`` the time of the state
  step ``i`` produces, ``next_t[-1] = -1``.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

NUM_DIFFUSION_TIMESTEPS = 1000


def linear_betas(start: float = 1e-4, end: float = 2e-2, num: int = NUM_DIFFUSION_TIMESTEPS) -> np.ndarray:
    """Linear beta schedule, (num,) float32 (float64 linspace, then cast, as the official runner)."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if not 0.0 < start <= end < 1.0:
        raise ValueError(f"need 0 < start <= end < 1 for a beta schedule, got start={start}, end={end}")
    return np.linspace(start, end, num, dtype=np.float64).astype(np.float32)


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """``cumprod(1 - betas)``, (num,) float32: float32 factors, float64 running product, float32 output."""
    betas = np.asarray(betas, dtype=np.float32)
    if betas.ndim != 1:
        raise ValueError(f"betas must be a 1-D array, got shape {betas.shape}")
    one_minus = (np.float32(1.0) - betas).astype(np.float32)
    return np.cumprod(one_minus.astype(np.float64)).astype(np.float32)


def abar_padded(betas: np.ndarray) -> np.ndarray:
    """``cumprod(1 - [0, betas])``, (num + 1,) float32; index ``t + 1`` gives abar(t), abar(-1) = 1."""
    betas = np.asarray(betas, dtype=np.float32)
    return alphas_cumprod(np.concatenate([np.zeros((1,), np.float32), betas]))


def compute_alpha(abar_pad: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """abar(t) for integer t in [-1, num - 1] (any shape): ``abar_pad[t + 1]``. jit-able."""
    abar_pad = jnp.asarray(abar_pad)
    if abar_pad.ndim != 1:
        raise ValueError(f"abar_padded must be 1-D, got shape {abar_pad.shape}")
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
    return jnp.take(abar_pad, t + 1, axis=0)


def timestep_sequence(
    num_steps: int,
    start: int = NUM_DIFFUSION_TIMESTEPS,
    drop_remainder: bool = True,
    skip_type: str = "uniform",
) -> tuple[np.ndarray, np.ndarray]:
    """DeqIR timesteps ``(t, next_t)``, both (T',) int64, noisiest first.

    ``uniform`` (the official default): ``seq = range(0, start, start // num_steps)``. With
    ``drop_remainder`` (the sampling rule, ``get_timestep_sequence_sr``) the last element is dropped when
    ``start % num_steps != 0`` (T = 15 gives 0, 66, ..., 924). ``drop_remainder=False`` is the inversion
    rule (``get_timestep_sequence``). Note that T' can differ from ``num_steps`` when ``start // num_steps``
    does not divide evenly (e.g. T = 300 gives 333 states), exactly as in the official code.
    ``quad``: ``int(s)`` for ``s`` in ``linspace(0, sqrt(0.8 * start), num_steps) ** 2``.
    ``next_t = ([-1] + seq[:-1])`` and both are returned reversed (noisiest first).
    """
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if not 1 <= num_steps <= start:
        raise ValueError(f"need 1 <= num_steps <= start, got num_steps={num_steps}, start={start}")
    if start > NUM_DIFFUSION_TIMESTEPS:
        raise ValueError(f"start must be <= {NUM_DIFFUSION_TIMESTEPS}, got {start}")
    if skip_type == "uniform":
        seq = list(range(0, start, start // num_steps))
        if drop_remainder and start % num_steps != 0:
            seq = seq[:-1]
    elif skip_type == "quad":
        seq = [int(s) for s in np.linspace(0, np.sqrt(start * 0.8), num_steps) ** 2]
    else:
        raise ValueError(f"unknown skip_type {skip_type!r}; expected 'uniform' or 'quad'")
    seq_next = [-1] + seq[:-1]
    t = np.asarray(seq[::-1], dtype=np.int64)
    next_t = np.asarray(seq_next[::-1], dtype=np.int64)
    return t, next_t
