"""DeqIR's joint fixed-point map over all T states of the DDIM + DDNM chain (spec section 4).

State layout: ``X`` is (T, H, W, C), row i = x_{next_t[i]} (noisiest first, last row = x_0), for ONE
image (the official code requires batch size 1; vmap for several images). Operators act on NHWC
batches and provide ``project(x) = A^+ A x`` and ``A_pinv(y)`` (see :mod:`deqir_jax.operators`).

With a_i = abar(t_i), b_i = abar(next_t_i), P = A^+A, N = I - P, the map is::

    F(X)_k = all_xT_k + sqrt(b_k) * ( sum_{j<=k} (gamma_j - delta_j) N eps_j + gamma_k P eps_k + noise_k ) + all_y_k
    eps    = eps_theta(concat([x_T], X[:-1]), t)          # ONE batched model call, per-row timesteps
    all_xT = sqrt(b / a_0) N x_T,   all_y = sqrt(b) A^+ y
    noise  = nu_k P z + sum_{j<=k} nu_j N z               # z: the single noise image reused at every step

delta = sqrt((1-a)/a) (``et_coeff1``), gamma = sqrt(1-b) sqrt(1-etw^2) / sqrt(b) (``et_coeff2``),
nu = sqrt(1-b) nw / sqrt(b) (``noise_coeff``). These are the official ``get_additional_anderson_args_sr``
values; ``use_svd=False`` (avg-pool SR without SVD) multiplies gamma and nu by sigma = sqrt(1 - b^2),
and the inversion variant multiplies nu by sigma also with SVD operators (spec section 7).

The model batch can be bounded with ``chunk_size`` (``lax.map`` over chunks) and sharded over the time
axis with ``sharding`` (a :func:`ircore.mesh.time_sharding`): the batch is zero-padded to a multiple of
the shard count, so the same call runs on 1 device or many and gives the same numbers.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from deqir_jax.anderson import SolverResult, anderson_solve
from deqir_jax.solver_settings import DEFAULT as DEFAULT_SOLVER, SolverSettings
from deqir_jax.triangular import triangular_solve
from ircore.mesh import constrain, num_shards, pad_to_multiple, padded_length, unpad

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]
Operator = Any  # object with A(x), A_pinv(y), project(x) on NHWC batches


class DeqCoefficients(NamedTuple):
    """Everything the map needs besides the model and the operator (a pytree of arrays).

    x_T:         (1, H, W, C) initial noise (row 0 of the model input; row 0 of the inversion output).
    t:           (T,) int32 model timestep of each row of the model input.
    all_xT:      (T, H, W, C) sqrt(b/a_0) * N x_T.
    all_y:       (T, H, W, C) sqrt(b) * A^+ y.
    et_coeff1:   (T,) delta.      et_coeff2: (T,) gamma.
    prevsum:     (T,) sqrt(b) (the official ``et_prevsum_coeff`` = ``y_coeff``).
    noise_coeff: (T,) nu.
    noise:       (T, H, W, C) nu_k P z + cumsum_k(nu N z) (constant: z is fixed).
    """

    x_T: Array
    t: Array
    all_xT: Array
    all_y: Array
    et_coeff1: Array
    et_coeff2: Array
    prevsum: Array
    noise_coeff: Array
    noise: Array


def _bcast(v: Array) -> Array:
    return v[:, None, None, None]


def _check_image(name: str, x: Array) -> None:
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"{name} must be one NHWC image of shape (1, H, W, C), got {tuple(x.shape)}")


def make_coefficients(
    op: Operator,
    x_T: Array,
    y: Array,
    z: Array,
    t: Array,
    at: Array,
    at_next: Array,
    *,
    nw: float = 0.0,
    etw: float = 0.0,
    use_svd: bool = True,
    inversion: bool = False,
) -> DeqCoefficients:
    """Official coefficients of the map (``get_additional_anderson_args_sr``), float32.

    op: operator; x_T, z: (1, H, W, C); y: measurement in the operator's layout with batch 1;
    t: (T,) int timesteps of the model inputs; at, at_next: (T,) abar(t), abar(next_t) (abar(-1) = 1).
    nw, etw: noise / eps weights. use_svd=False: non-SVD avg-pool branch (extra sigma factor on gamma
    and nu). inversion=True: coefficients of the DEQ-inversion map (extra sigma factor on nu).
    Arithmetic in x_T's dtype (at least float32). Differentiable in x_T, y and z.
    """
    _check_image("x_T", x_T)
    _check_image("z", z)
    if z.shape != x_T.shape:
        raise ValueError(f"z must have the shape of x_T {tuple(x_T.shape)}, got {tuple(z.shape)}")
    t = jnp.asarray(t)
    at = jnp.asarray(at)
    at_next = jnp.asarray(at_next)
    if t.ndim != 1 or at.shape != t.shape or at_next.shape != t.shape:
        raise ValueError(
            f"t, at, at_next must be 1-D of equal length, got {t.shape}, {at.shape}, {at_next.shape}"
        )
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"timesteps t must be integers, got dtype {t.dtype}")
    dtype = jnp.promote_types(x_T.dtype, jnp.float32)
    at = at.astype(dtype)
    at_next = at_next.astype(dtype)
    x_T = x_T.astype(dtype)
    z = z.astype(dtype)
    nw = jnp.asarray(nw, dtype)
    etw = jnp.asarray(etw, dtype)

    alpha_ratio = jnp.sqrt(at_next / at[0])
    null_xT = x_T - op.project(x_T)
    all_xT = _bcast(alpha_ratio) * null_xT
    inv_sqrt_b = 1.0 / jnp.sqrt(at_next)
    sigma = jnp.sqrt(1.0 - at_next**2)
    c1 = jnp.sqrt(1.0 - at_next) * nw
    c2 = jnp.sqrt(1.0 - at_next) * jnp.sqrt(1.0 - etw**2)
    c3 = jnp.sqrt(((1.0 - at) * at_next) / at)
    et_coeff1 = inv_sqrt_b * c3
    et_coeff2 = inv_sqrt_b * c2
    noise_coeff = inv_sqrt_b * c1
    if not use_svd:
        et_coeff2 = et_coeff2 * sigma
    if (not use_svd) or inversion:
        noise_coeff = noise_coeff * sigma
    prevsum = jnp.sqrt(at_next)
    all_y = _bcast(prevsum) * op.A_pinv(y).astype(dtype)
    all_y = jnp.broadcast_to(all_y, all_xT.shape)
    p_z = op.project(z)
    noise = _bcast(noise_coeff) * p_z + jnp.cumsum(_bcast(noise_coeff) * (z - p_z), axis=0)
    return DeqCoefficients(
        x_T=x_T, t=t.astype(jnp.int32), all_xT=all_xT, all_y=all_y, et_coeff1=et_coeff1,
        et_coeff2=et_coeff2, prevsum=prevsum, noise_coeff=noise_coeff, noise=noise,
    )


def batched_eps(
    eps_fn: EpsFn,
    x: Array,
    t: Array,
    *,
    chunk_size: int | None = None,
    sharding: NamedSharding | None = None,
) -> Array:
    """eps_fn on a batch (R, H, W, C) with per-row timesteps t (R,); returns (R, H, W, C) in x's dtype
    (at least float32).

    Extra output channels (learned sigma) are dropped. chunk_size bounds the rows per model call
    (rounded up to a multiple of the shard count); sharding splits each call's rows over devices.
    Padding rows are zeros at t = 0 and are discarded.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    R, C = x.shape[0], x.shape[-1]
    out_dtype = jnp.promote_types(x.dtype, jnp.float32)
    shards = num_shards(sharding)
    chunk = padded_length(R if chunk_size is None else min(int(chunk_size), R), shards)
    n_chunks = -(-R // chunk)
    xp = pad_to_multiple(x, chunk)
    tp = pad_to_multiple(t.astype(jnp.int32), chunk)

    def call(xc, tc):
        out = eps_fn(constrain(xc, sharding), tc)
        if out.shape[:-1] != xc.shape[:-1] or out.shape[-1] < C:
            raise ValueError(f"eps_fn returned shape {tuple(out.shape)} for input {tuple(xc.shape)}")
        return constrain(out[..., :C].astype(out_dtype), sharding)

    if n_chunks == 1:
        eps = call(xp, tp)
    else:
        stacked_sharding = None
        if sharding is not None:
            stacked_sharding = NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
        xs = constrain(xp.reshape((n_chunks, chunk) + x.shape[1:]), stacked_sharding)
        ts = tp.reshape(n_chunks, chunk)
        eps = jax.lax.map(lambda a: call(*a), (xs, ts)).reshape(xp.shape[:-1] + (C,))
    return unpad(eps, R)


def combine_eps(op: Operator, coefs: DeqCoefficients, eps: Array) -> Array:
    """The closed form of section 4 given eps of all T rows (T, H, W, C) -> the T new states."""
    p_eps = op.project(eps)
    n_eps = eps - p_eps
    gamma, delta = coefs.et_coeff2, coefs.et_coeff1
    cum = jnp.cumsum(_bcast(gamma - delta) * n_eps, axis=0)
    inner = cum + _bcast(gamma) * p_eps + coefs.noise
    return coefs.all_xT + _bcast(coefs.prevsum) * inner + coefs.all_y


def deq_map(
    eps_fn: EpsFn,
    op: Operator,
    coefs: DeqCoefficients,
    X: Array,
    *,
    chunk_size: int | None = None,
    sharding: NamedSharding | None = None,
) -> Array:
    """Sampling map F(X): (T, H, W, C) -> (T, H, W, C); model input is ``concat([x_T], X[:-1])``."""
    T = coefs.t.shape[0]
    if X.shape != (T,) + coefs.x_T.shape[1:]:
        raise ValueError(f"states must have shape {(T,) + coefs.x_T.shape[1:]}, got {tuple(X.shape)}")
    inputs = jnp.concatenate([coefs.x_T.astype(X.dtype), X[:-1]], axis=0)
    eps = batched_eps(eps_fn, inputs, coefs.t, chunk_size=chunk_size, sharding=sharding)
    return combine_eps(op, coefs, eps).astype(X.dtype)


def deq_inversion_map(
    eps_fn: EpsFn,
    op: Operator,
    coefs: DeqCoefficients,
    X: Array,
    *,
    chunk_size: int | None = None,
    sharding: NamedSharding | None = None,
) -> Array:
    """DEQ-inversion map (spec section 7): (T+1, H, W, C) -> (T+1, H, W, C).

    Row 0 holds x_T: the model sees rows 0..T-1 of X, output row 0 is ``coefs.x_T`` and rows 1..T are
    the T new states (build ``coefs`` with ``inversion=True``).
    """
    T = coefs.t.shape[0]
    if X.shape != (T + 1,) + coefs.x_T.shape[1:]:
        raise ValueError(
            f"inversion states must have shape {(T + 1,) + coefs.x_T.shape[1:]}, got {tuple(X.shape)}"
        )
    eps = batched_eps(eps_fn, X[:-1], coefs.t, chunk_size=chunk_size, sharding=sharding)
    new = combine_eps(op, coefs, eps)
    return jnp.concatenate([coefs.x_T, new], axis=0).astype(X.dtype)


def initial_states(x_T: Array, T: int, inversion: bool = False) -> Array:
    """The official initial guess: x_T repeated T (inversion: T + 1) times."""
    _check_image("x_T", x_T)
    return jnp.repeat(x_T, T + int(inversion), axis=0)


def eps_fn_from_model(model: Any, params: Any) -> EpsFn:
    """``eps_fn(x, t) = model.apply({'params': params}, x, t)`` (extra channels are dropped by the map)."""

    def eps_fn(x: Array, t: Array) -> Array:
        return model.apply({"params": params}, x, t)

    return eps_fn


def chain_row_fns(
    eps_fn: EpsFn,
    op: Operator,
    coefs: DeqCoefficients,
    *,
    chunk_size: int | None = None,
    sharding: NamedSharding | None = None,
) -> tuple[Callable[[Array, Array, int], Array], Callable[[Array], Array]]:
    """The map split for the chain solvers of :mod:`deqir_jax.triangular`: ``eval_rows(X, start, size)`` ->
    eps of rows ``start .. start+size-1`` (their inputs ``concat([x_T], X[:-1])``; one batched call of
    ``size`` rows) and ``combine(E)`` -> the T states (:func:`combine_eps`)."""

    def eval_rows(X: Array, start: Array, size: int) -> Array:
        inputs = jnp.concatenate([coefs.x_T.astype(X.dtype), X[:-1]], axis=0)
        x = jax.lax.dynamic_slice_in_dim(inputs, start, size, axis=0)
        t = jax.lax.dynamic_slice_in_dim(coefs.t, start, size, axis=0)
        return batched_eps(eps_fn, x, t, chunk_size=chunk_size, sharding=sharding)

    return eval_rows, lambda E: combine_eps(op, coefs, E)


def solve_parallel(
    eps_fn: EpsFn,
    op: Operator,
    coefs: DeqCoefficients,
    settings: SolverSettings = DEFAULT_SOLVER,
    *,
    x_init: Array | None = None,
    sharding: NamedSharding | None = None,
    trace: bool = False,
) -> SolverResult:
    """DeqIR sampling: solve X = deq_map(X) with ``settings`` and return the
    :class:`~deqir_jax.anderson.SolverResult` (jit-able; wrap it in ``jax.jit`` with the model parameters
    as arguments).

    ``settings.method``: ``"anderson"`` (the official solve, :data:`~deqir_jax.solver_settings.OFFICIAL_ANDERSON`),
    ``"picard"`` or ``"triangular"`` (windowed, row-freezing chain solves of :mod:`deqir_jax.triangular`).
    The initial guess is ``x_init`` or x_T repeated (the official one). The restored image is
    ``result.solution[-1:]`` (1, H, W, C); check ``result.status`` /
    :func:`deqir_jax.anderson.check_result` on the host.
    """
    if not isinstance(settings, SolverSettings):
        raise TypeError(f"settings must be a SolverSettings, got {type(settings).__name__}")
    T = coefs.t.shape[0]
    x0 = initial_states(coefs.x_T, T) if x_init is None else x_init
    if x0.shape != (T,) + coefs.x_T.shape[1:]:
        raise ValueError(f"x_init must have shape {(T,) + coefs.x_T.shape[1:]}, got {tuple(x0.shape)}")
    chunk = settings.chunk_size or None
    if settings.method == "anderson":
        f = lambda X: deq_map(eps_fn, op, coefs, X, chunk_size=chunk, sharding=sharding)  # noqa: E731
        return anderson_solve(f, x0, m=settings.m, lam=settings.lam, beta=settings.beta, tol=settings.tol,
                              max_iter=settings.max_iter, state_sharding=sharding, trace=trace)
    if settings.warm_start > T:
        raise ValueError(f"solver settings: warm_start ({settings.warm_start}) must be <= T ({T}) rounds")
    eval_rows, combine = chain_row_fns(eps_fn, op, coefs, chunk_size=chunk, sharding=sharding)
    return triangular_solve(
        eval_rows, combine, x0, coefs.prevsum, window=settings.window_rows(T),
        m=settings.m if settings.method == "triangular" else 1, lam=settings.lam, tol=settings.tol,
        row_tol=settings.row_tol, stop=settings.stop, x0_tol=settings.x0_tol, max_iter=settings.rounds(T),
        warm_start=settings.warm_start, state_sharding=sharding, trace=trace,
    )
