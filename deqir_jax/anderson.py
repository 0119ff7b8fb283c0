"""Generic fixed-point solvers in ``lax.while_loop``: Anderson acceleration (DeqIR semantics) and Picard.

Defaults are the official settings (:data:`deqir_jax.solver_settings.OFFICIAL_ANDERSON`); the chain-aware
solvers (windowed Picard, triangular Anderson) are in :mod:`deqir_jax.triangular`.

Both solve ``X = f(X)`` for a state ``X`` of shape ``(R, ...)`` whose leading axis holds R independent
rows (DeqIR: the T chain states). The whole solve is one device loop: no host round trips.

Anderson follows the official ``anderson`` of DeqIR (functions/ddim_anderson.py, spec section 5):

* ring buffers ``X, F`` of ``m`` slots per row; set-up ``X0 = x0, F0 = f(X0), X1 = F0, F1 = f(X1)``;
* for ``k = 2 .. max_iter-1``: ``n = min(k, m)``, ``G = F[:n] - X[:n]``, each row r solves its own
  ``[[0, 1^T], [1, G_r G_r^T + lam I]] [mu, alpha_r] = [1, 0]``, then
  ``X[k % m] = beta * sum_i alpha_ri F_i + (1 - beta) * sum_i alpha_ri X_i`` and ``F[k % m] = f(X[k % m])``;
* stop (from k = 2 on) when ``||F - X||_F / (1e-5 + ||F||_F) <= tol`` with ONE Frobenius norm over all rows
  (the official ``<``; ``<=`` so that ``tol = 0`` still stops at an exact fixed point);
* ``max_iter`` counts map evaluations including the two set-up ones; the output is the last iterate
  ``X[k % m]`` (not ``F``).

Every evaluation's residual is recorded. Non-finite residuals (status ``NOT_FINITE``) or an absolute
residual above ``divergence_ratio`` times the first one (status ``DIVERGED``) stop the loop at once;
:func:`check_result` turns those into a :class:`SolverDivergedError` on the host.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from deqir_jax.solver_settings import OFFICIAL_ANDERSON as _OFFICIAL
from ircore.mesh import constrain

Array = jax.Array
MapFn = Callable[[Array], Array]

# status codes of SolverResult.status
CONVERGED = 0
MAX_ITER = 1
DIVERGED = 2
NOT_FINITE = 3
RUNNING = -1
STATUS_NAMES = {CONVERGED: "converged", MAX_ITER: "max_iter", DIVERGED: "diverged", NOT_FINITE: "not_finite"}

_HI = jax.lax.Precision.HIGHEST


class SolverDivergedError(RuntimeError):
    """The fixed-point solve produced NaN/inf or its residual blew up."""


class SolverResult(NamedTuple):
    """Outcome of a fixed-point solve (a pytree; every field is an array).

    solution:      (R, ...) the solver's answer (Anderson: last iterate; Picard: last f(X)).
    n_evals:       () int32, number of map evaluations used.
    residuals:     (max_iter,) relative residual ||f(X)-X||_F / (1e-5 + ||f(X)||_F) of each evaluation,
                   NaN after the last one.
    abs_residuals: (max_iter,) absolute residual ||f(X)-X||_F of each evaluation, NaN padded.
    status:        () int32, one of CONVERGED, MAX_ITER, DIVERGED, NOT_FINITE.
    image_evals:   () int32, rows (images) the network evaluated in all (= n_evals x R for a whole-state
                   solve; fewer for a windowed one; a warm start's calls included).
    x0_trace:      (max_iter, ...) the last row (DeqIR: x0) of the iterate after each evaluation, NaN padded;
                   only with ``trace=True`` (benchmarks), else None.
    """

    solution: Array
    n_evals: Array
    residuals: Array
    abs_residuals: Array
    status: Array
    image_evals: Array
    x0_trace: Array | None = None


def _trace_init(trace: bool, n: int, x: Array) -> Array | None:
    """(n, ...) NaN buffer for the last row of every evaluation's iterate (None when not traced)."""
    return jnp.full((n,) + x.shape[1:], jnp.nan, x.dtype) if trace else None


def _trace_set(buf: Array | None, i: Array, x: Array) -> Array | None:
    return None if buf is None else buf.at[i].set(x[-1])


def _compute_dtype(dtype) -> jnp.dtype:
    """Solver arithmetic dtype: the state dtype, at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def _norm(x: Array) -> Array:
    x = x.astype(_compute_dtype(x.dtype))
    return jnp.sqrt(jnp.sum(x * x))


def _residual(fx: Array, x: Array) -> tuple[Array, Array]:
    abs_res = _norm(fx - x)
    return abs_res, abs_res / (1e-5 + _norm(fx))


def _classify(abs_res, rel_res, first_abs, tol, check_tol, divergence_ratio) -> Array:
    """Status after evaluation k (RUNNING when the loop should go on)."""
    not_finite = ~(jnp.isfinite(abs_res) & jnp.isfinite(rel_res))
    blown_up = abs_res > divergence_ratio * first_abs
    converged = check_tol & (rel_res <= tol)  # <=: with tol 0 an exact fixed point still stops the loop
    return jnp.select(
        [not_finite, blown_up, converged],
        [jnp.int32(NOT_FINITE), jnp.int32(DIVERGED), jnp.int32(CONVERGED)],
        jnp.int32(RUNNING),
    )


def _validate(x0: Array, max_iter: int, min_iter: int, name: str) -> None:
    if not isinstance(max_iter, int) or max_iter < min_iter:
        raise ValueError(f"{name}: max_iter must be an int >= {min_iter} (map evaluations), got {max_iter!r}")
    if x0.ndim < 1 or x0.shape[0] < 1:
        raise ValueError(f"{name}: x0 must have a leading row axis, got shape {x0.shape}")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"{name}: x0 must be floating point, got {x0.dtype}")


def _history(max_iter: int, dtype) -> Array:
    return jnp.full((max_iter,), jnp.nan, _compute_dtype(dtype))


def _mixing_weights(X: Array, F: Array, n: Array, lam) -> Array:
    """Per-row Anderson weights alpha: (R, m), zero on the slots >= n."""
    R, m = X.shape[:2]
    cdt = _compute_dtype(X.dtype)
    G = (F - X).reshape(R, m, -1).astype(cdt)
    gram = jnp.einsum("rid,rjd->rij", G, G, precision=_HI)
    used = jnp.arange(m) < n  # (m,)
    both = used[:, None] & used[None, :]
    eye = jnp.eye(m, dtype=cdt)
    # unused slots become decoupled identity rows with zero right-hand side, so their alpha is 0
    block = jnp.where(both, gram + lam * eye, eye)
    border = used.astype(cdt)
    top = jnp.concatenate([jnp.zeros((1,), cdt), border])  # (m+1,)
    H = jnp.concatenate(
        [jnp.broadcast_to(top, (R, 1, m + 1)),
         jnp.concatenate([jnp.broadcast_to(border[None, :, None], (R, m, 1)), block], axis=2)],
        axis=1,
    )
    rhs = jnp.zeros((R, m + 1), cdt).at[:, 0].set(1.0)
    sol = jnp.linalg.solve(H, rhs[..., None])[..., 0]
    alpha = jnp.where(used[None, :], sol[:, 1:], 0.0)
    # A numerically singular system (a row whose residuals vanished, with a tiny lam) solves to NaN / inf:
    # such a row takes the limit of the regularised weights as the Gram matrix goes to 0, the uniform mean.
    uniform = jnp.broadcast_to(border / jnp.maximum(jnp.sum(border), 1.0), alpha.shape)
    return jnp.where(jnp.all(jnp.isfinite(alpha), axis=1, keepdims=True), alpha, uniform)


def anderson_solve(
    f: MapFn,
    x0: Array,
    *,
    m: int = _OFFICIAL.m,
    lam: float | Array = _OFFICIAL.lam,
    beta: float | Array = _OFFICIAL.beta,
    tol: float | Array = _OFFICIAL.tol,
    max_iter: int = _OFFICIAL.max_iter,
    divergence_ratio: float = 1e4,
    state_sharding: NamedSharding | None = None,
    trace: bool = False,
) -> SolverResult:
    """Anderson acceleration of ``X = f(X)`` with per-row mixing and a joint stopping norm.

    f: map (R, ...) -> (R, ...), same dtype. x0: (R, ...) initial guess. m: ring-buffer size.
    lam: Tikhonov term of the Gram matrix. beta: damping (1 = use F only). tol: on the joint relative
    residual, checked from the third evaluation on. max_iter: map evaluations including the two
    set-up ones (>= 2). state_sharding: optional sharding of the row axis (applied to the state and
    the (R, m, ...) buffers). Returns a :class:`SolverResult` whose ``solution`` is the last iterate.
    """
    _validate(x0, max_iter, 2, "anderson_solve")
    if not isinstance(m, int) or m < 2:
        raise ValueError(f"anderson_solve: m (history size) must be an int >= 2, got {m!r}")
    dtype = x0.dtype
    R = x0.shape[0]

    def fx(x):
        return constrain(f(constrain(x, state_sharding)).astype(dtype), state_sharding)

    X = jnp.zeros((R, m) + x0.shape[1:], dtype)
    F = jnp.zeros_like(X)
    f0 = fx(x0)
    X = constrain(X.at[:, 0].set(x0), state_sharding)
    F = constrain(F.at[:, 0].set(f0), state_sharding)
    abs0, rel0 = _residual(f0, x0)
    status0 = _classify(abs0, rel0, abs0, tol, False, divergence_ratio)
    state = dict(
        k=jnp.int32(1), X=X, F=F, x_last=x0,
        abs_hist=_history(max_iter, dtype).at[0].set(abs0), rel_hist=_history(max_iter, dtype).at[0].set(rel0),
        status=status0, first_abs=abs0, trace=_trace_set(_trace_init(trace, max_iter, x0), 0, x0),
    )

    def cond(s):
        return (s["k"] < max_iter) & (s["status"] == RUNNING)

    def body(s):
        k, X, F = s["k"], s["X"], s["F"]
        n = jnp.minimum(k, m)
        alpha = _mixing_weights(X, F, n, lam)
        mix_f = jnp.einsum("ri,ri...->r...", alpha, F.astype(alpha.dtype), precision=_HI)
        mix_x = jnp.einsum("ri,ri...->r...", alpha, X.astype(alpha.dtype), precision=_HI)
        x_mix = (beta * mix_f + (1.0 - beta) * mix_x).astype(dtype)
        x_new = jnp.where(k == 1, F[:, 0], x_mix)  # second set-up evaluation: X1 = F0
        f_new = fx(x_new)
        slot = k % m
        X = constrain(jax.lax.dynamic_update_index_in_dim(X, x_new, slot, axis=1), state_sharding)
        F = constrain(jax.lax.dynamic_update_index_in_dim(F, f_new, slot, axis=1), state_sharding)
        abs_res, rel_res = _residual(f_new, x_new)
        status = _classify(abs_res, rel_res, s["first_abs"], tol, k >= 2, divergence_ratio)
        return dict(
            k=k + 1, X=X, F=F, x_last=x_new,
            abs_hist=s["abs_hist"].at[k].set(abs_res), rel_hist=s["rel_hist"].at[k].set(rel_res),
            status=status, first_abs=s["first_abs"], trace=_trace_set(s["trace"], k, x_new),
        )

    s = jax.lax.while_loop(cond, body, state)
    status = jnp.where(s["status"] == RUNNING, jnp.int32(MAX_ITER), s["status"])
    return SolverResult(s["x_last"], s["k"], s["rel_hist"], s["abs_hist"], status, s["k"] * jnp.int32(R), s["trace"])


def picard_solve(
    f: MapFn,
    x0: Array,
    *,
    tol: float | Array = 0.0,
    max_iter: int = _OFFICIAL.max_iter,
    divergence_ratio: float = 1e4,
    state_sharding: NamedSharding | None = None,
    trace: bool = False,
) -> SolverResult:
    """Plain fixed-point iteration ``X_{k+1} = f(X_k)`` from ``x0`` (R, ...).

    Evaluation k records ||f(X_k) - X_k||; the loop stops when its relative value is <= tol (checked
    from the first evaluation on; tol = 0 runs until the residual is exactly 0 or ``max_iter`` evaluations). ``solution`` is the last
    ``f(X_k)``, so DeqIR's triangular map is solved exactly after T evaluations.
    """
    _validate(x0, max_iter, 1, "picard_solve")
    dtype = x0.dtype

    def fx(x):
        return constrain(f(constrain(x, state_sharding)).astype(dtype), state_sharding)

    state = dict(
        k=jnp.int32(0), x=constrain(x0, state_sharding), abs_hist=_history(max_iter, dtype),
        rel_hist=_history(max_iter, dtype), status=jnp.int32(RUNNING), first_abs=jnp.array(jnp.inf, _compute_dtype(dtype)),
        trace=_trace_init(trace, max_iter, x0),
    )

    def cond(s):
        return (s["k"] < max_iter) & (s["status"] == RUNNING)

    def body(s):
        k, x = s["k"], s["x"]
        f_new = fx(x)
        abs_res, rel_res = _residual(f_new, x)
        first_abs = jnp.where(k == 0, abs_res, s["first_abs"])
        status = _classify(abs_res, rel_res, first_abs, tol, True, divergence_ratio)
        return dict(
            k=k + 1, x=f_new, abs_hist=s["abs_hist"].at[k].set(abs_res),
            rel_hist=s["rel_hist"].at[k].set(rel_res), status=status, first_abs=first_abs,
            trace=_trace_set(s["trace"], k, f_new),
        )

    s = jax.lax.while_loop(cond, body, state)
    status = jnp.where(s["status"] == RUNNING, jnp.int32(MAX_ITER), s["status"])
    return SolverResult(s["x"], s["k"], s["rel_hist"], s["abs_hist"], status, s["k"] * jnp.int32(x0.shape[0]), s["trace"])


def check_result(result: SolverResult, *, require_convergence: bool = False) -> SolverResult:
    """Host-side check: raise :class:`SolverDivergedError` if the solve diverged or hit NaN/inf.

    With ``require_convergence=True`` also raise when the evaluation budget ran out. Returns ``result``.
    """
    status = int(result.status)
    n = int(result.n_evals)
    last = float(result.residuals[n - 1]) if n > 0 else float("nan")
    last_abs = float(result.abs_residuals[n - 1]) if n > 0 else float("nan")
    if status == NOT_FINITE:
        raise SolverDivergedError(
            f"fixed-point solve produced NaN/inf at map evaluation {n} (abs residual {last_abs:.4g})"
        )
    if status == DIVERGED:
        raise SolverDivergedError(
            f"fixed-point solve diverged at map evaluation {n}: abs residual {last_abs:.4g} "
            f"(relative {last:.4g}) blew up from {float(result.abs_residuals[0]):.4g}"
        )
    if require_convergence and status != CONVERGED:
        raise SolverDivergedError(
            f"fixed-point solve did not converge in {n} map evaluations (relative residual {last:.4g})"
        )
    return result
