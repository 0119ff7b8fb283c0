"""Solves of a causal (triangular) chain in one ``lax.while_loop``: windowed Picard and triangular Anderson.

The chain has T rows. Row k's direction ``E_k`` is a network evaluation on the state of the row before it
(``E_k = eps(X_{k-1}, t_k)``, row 0 reads a fixed input), and the states are a cheap causal function of all
directions, ``X = combine(E)`` (row k uses ``E_0 .. E_k`` only; DeqIR: :func:`deqir_jax.fixed_point.combine_eps`).
The solver keeps ``E`` as a cache and each round

1. evaluates the directions of a **live window** of W rows only, ``eval_rows(X, start, W)`` (one batched
   network call; rows past the window that were never evaluated take the window's last direction, the DDIM
   extrapolation; rows before it are frozen);
2. forms ``F = combine(E)`` and the residual ``R = F - X`` of every row;
3. updates the states: Picard ``X <- F``, or **triangular Anderson** (``m >= 2``, after ParaTAA, Tang et al.
   2024): with the last m iterates in row-scaled units (``X / s_k``, ``R / s_k``), row k mixes with weights
   ``gamma_k = argmin || R_{<=k} - dR_{<=k} gamma ||^2 + lam' ||gamma||^2`` fitted on rows 0..k only (what
   determines row k; ``lam' = lam`` times the mean diagonal of that Gram matrix), then
   ``X_k <- X_k + s_k (R_k - (dX_k + dR_k) gamma_k)``;
4. freezes the leading rows whose change is below ``row_tol`` in row-scaled units (``s_k`` = that step's
   signal level sqrt(abar) for DeqIR: an error e in row k reaches x0 amplified by about 1/s_k). The first live
   row always freezes: its input was already frozen, so its new state is exact. The window then starts at
   the first live row.

Stopping: every row frozen, or (``stop="residual"``) the joint relative residual ``||R|| / ||F||`` at or below
``tol``, or (``stop="x0"``) the last row (x0, what the user gets) moved less than ``x0_tol`` (RMS) in a round
whose window held every row that is not frozen (so no row's direction was extrapolated). A ``warm_start`` of S rounds first runs a coarse sequential chain on the same grid
(one network call per block of about T/S rows, the direction held over the block: the S-step DDIM chain on
the coarse grid), and those calls count in ``n_evals`` and ``image_evals``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from deqir_jax.anderson import (CONVERGED, DIVERGED, MAX_ITER, NOT_FINITE, RUNNING, SolverResult,
                                _compute_dtype, _residual, _trace_init, _trace_set)
from ircore.mesh import constrain

Array = jax.Array
EvalRows = Callable[[Array, Array, int], Array]  # (X (T, ...), start (), size) -> (size, ...)
Combine = Callable[[Array], Array]  # E (T, ...) -> X (T, ...)

_HI = jax.lax.Precision.HIGHEST
STOPS = ("residual", "x0")


def _rows(v: Array, like: Array) -> Array:
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


def _rms_rows(x: Array) -> Array:
    x = x.astype(_compute_dtype(x.dtype))
    return jnp.sqrt(jnp.mean(jnp.square(x.reshape(x.shape[0], -1)), axis=1))


def taa_update(hist_x: Array, hist_r: Array, count: Array, r: Array, lam) -> Array:
    """Triangular Anderson step in scaled units: returns ``R - (dX + dR) gamma`` per row.

    hist_x, hist_r: (m, T, ...) the last m iterates and residuals, newest last (``count`` of them valid);
    r: (T, ...) the current residual (= hist_r[-1]). Row k's gamma solves the regularised least squares on
    the residual differences of rows 0..k (cumulative Gram matrices). Rows without history return ``r``.
    """
    m = hist_x.shape[0]
    if m < 2:
        return r
    cdt = _compute_dtype(r.dtype)
    T = r.shape[0]
    dx = (hist_x[1:] - hist_x[:-1]).astype(cdt)  # (m-1, T, ...)
    dr = (hist_r[1:] - hist_r[:-1]).astype(cdt)
    valid = jnp.arange(m - 1) >= (m - count)  # newest count-1 differences
    dr_flat = dr.reshape(m - 1, T, -1)
    gram = jnp.cumsum(jnp.einsum("itd,jtd->tij", dr_flat, dr_flat, precision=_HI), axis=0)
    rhs = jnp.cumsum(jnp.einsum("itd,td->ti", dr_flat, r.reshape(T, -1).astype(cdt), precision=_HI), axis=0)
    both = valid[:, None] & valid[None, :]
    n_valid = jnp.maximum(jnp.sum(valid), 1).astype(cdt)
    scale = jnp.trace(jnp.where(both, gram, 0.0), axis1=1, axis2=2) / n_valid  # (T,)
    eye = jnp.eye(m - 1, dtype=cdt)
    tiny = jnp.finfo(cdt).tiny ** 0.5
    system = jnp.where(both, gram, 0.0) + eye * (lam * scale + tiny)[:, None, None]
    system = jnp.where(both, system, eye)  # unused slots: decoupled with zero right-hand side
    gamma = jnp.linalg.solve(system, jnp.where(valid, rhs, 0.0)[..., None])[..., 0]  # (T, m-1)
    gamma = jnp.where(jnp.all(jnp.isfinite(gamma), axis=1, keepdims=True), gamma, 0.0)
    step = jnp.einsum("ti,it...->t...", gamma, dx + dr, precision=_HI)
    return (r.astype(cdt) - step).astype(r.dtype)


def triangular_solve(
    eval_rows: EvalRows,
    combine: Combine,
    x_init: Array,
    row_scale: Array,
    *,
    window: int,
    m: int,
    lam: float,
    tol: float,
    row_tol: float,
    stop: str,
    x0_tol: float,
    max_iter: int,
    warm_start: int = 0,
    divergence_ratio: float = 1e4,
    state_sharding: NamedSharding | None = None,
    trace: bool = False,
) -> SolverResult:
    """Solves the causal chain ``X = combine(E(X))`` (see the module docstring).

    x_init: (T, ...) initial states (ignored where ``warm_start`` > 0 sets them); row_scale: (T,) positive
    per-row scale of the row tolerance and the Anderson fit; window: live rows per round (1..T); m: history
    (1 = Picard); max_iter: parallel rounds after the warm start. Returns a SolverResult whose ``solution``
    is the last iterate, ``n_evals`` the sequential rounds (warm start included), ``image_evals`` the rows
    evaluated, and whose histories hold one entry per round (NaN for warm-start rounds).
    """
    T = x_init.shape[0]
    if not 1 <= window <= T:
        raise ValueError(f"triangular_solve: window must be in 1..{T} rows, got {window}")
    if not 0 <= warm_start <= T:
        raise ValueError(f"triangular_solve: warm_start must be in 0..{T} rounds, got {warm_start}")
    if stop not in STOPS:
        raise ValueError(f"triangular_solve: stop must be one of {STOPS}, got {stop!r}")
    if max_iter < 1 or m < 1:
        raise ValueError(f"triangular_solve: max_iter and m must be >= 1, got {max_iter}, {m}")
    dtype = x_init.dtype
    cdt = _compute_dtype(dtype)
    rows = jnp.arange(T)
    scale = _rows(jnp.maximum(jnp.asarray(row_scale, cdt), jnp.finfo(cdt).tiny ** 0.5), x_init)
    n_hist = max_iter + warm_start
    cons = lambda a: constrain(a, state_sharding)  # noqa: E731

    X = cons(x_init.astype(dtype))
    E = None
    if warm_start:
        starts = jnp.asarray([(i * T) // warm_start for i in range(warm_start)], jnp.int32)

        def coarse(i, carry):
            X, E = carry
            e = eval_rows(X, starts[i], 1).astype(dtype)
            E = cons(jnp.where(_rows(rows >= starts[i], E), e, E))
            return cons(combine(E).astype(dtype)), E

        e0 = eval_rows(X, jnp.int32(0), 1).astype(dtype)
        X, E = jax.lax.fori_loop(0, warm_start, coarse, (X, cons(jnp.broadcast_to(e0, X.shape))))
    else:
        E = cons(jnp.zeros_like(X))
    hist = jnp.zeros((m,) + X.shape, dtype)
    nan_hist = jnp.full((n_hist,), jnp.nan, cdt)
    state = dict(k=jnp.int32(0), X=X, E=E, s=jnp.int32(0), hx=hist, hr=hist, count=jnp.int32(0),
                 abs_hist=nan_hist, rel_hist=nan_hist, status=jnp.int32(RUNNING),
                 first_abs=jnp.array(jnp.inf, cdt), image_evals=jnp.int32(warm_start),
                 trace=_trace_set(_trace_init(trace, n_hist, X), jnp.maximum(warm_start - 1, 0), X)
                 if warm_start else _trace_init(trace, n_hist, X))

    def cond(st):
        return (st["k"] < max_iter) & (st["status"] == RUNNING)

    def body(st):
        k, X, E, s = st["k"], st["X"], st["E"], st["s"]
        start = jnp.minimum(s, T - window)
        e_win = eval_rows(X, start, window).astype(dtype)
        E = jax.lax.dynamic_update_slice_in_dim(E, e_win, start, axis=0)
        if not warm_start:  # rows never evaluated: DDIM extrapolation with the window's last direction
            last = jax.lax.dynamic_index_in_dim(e_win, window - 1, keepdims=True)
            E = jnp.where(_rows(rows >= start + window, E), last, E)
        E = cons(E)
        F = cons(combine(E).astype(dtype))
        R = F - X
        abs_res, rel_res = _residual(F, X)
        if m >= 2:
            hx = jnp.concatenate([st["hx"][1:], (X / scale).astype(dtype)[None]], axis=0)
            hr = jnp.concatenate([st["hr"][1:], (R / scale).astype(dtype)[None]], axis=0)
            count = jnp.minimum(st["count"] + 1, m)
            step = taa_update(hx, hr, count, hr[-1], lam)
            X_new = (X + scale * step).astype(dtype)
        else:
            hx, hr, count = st["hx"], st["hr"], st["count"]
            X_new = F
        X_new = cons(jnp.where(_rows(rows <= s, X_new), F, X_new))  # rows with final inputs are exact
        change = _rms_rows((X_new - X) / scale)
        live = (rows >= start) & (rows < start + window)
        settled = (rows <= s) | (live & (change <= row_tol))
        s_new = jnp.maximum(jnp.sum(jnp.cumprod(settled.astype(jnp.int32))), s + 1).astype(jnp.int32)
        dx0 = _rms_rows(X_new[-1:] - X[-1:])[0]
        first_abs = jnp.where(k == 0, abs_res, st["first_abs"])
        not_finite = ~(jnp.isfinite(abs_res) & jnp.isfinite(rel_res) & jnp.isfinite(dx0))
        blown_up = abs_res > divergence_ratio * first_abs
        done = s_new >= T
        if stop == "residual":
            done = done | (rel_res <= tol)
        else:
            # only in a round where every row past the frozen prefix was evaluated afresh (no extrapolated rows)
            done = done | ((dx0 <= x0_tol) & (s + window >= T) & (k >= 1))
        status = jnp.select([not_finite, blown_up, done],
                            [jnp.int32(NOT_FINITE), jnp.int32(DIVERGED), jnp.int32(CONVERGED)], jnp.int32(RUNNING))
        i = warm_start + k
        return dict(k=k + 1, X=X_new, E=E, s=jnp.minimum(s_new, T), hx=hx, hr=hr, count=count,
                    abs_hist=st["abs_hist"].at[i].set(abs_res), rel_hist=st["rel_hist"].at[i].set(rel_res),
                    status=status, first_abs=first_abs, image_evals=st["image_evals"] + window,
                    trace=_trace_set(st["trace"], i, X_new))

    st = jax.lax.while_loop(cond, body, state)
    status = jnp.where(st["status"] == RUNNING, jnp.int32(MAX_ITER), st["status"])
    return SolverResult(st["X"], st["k"] + warm_start, st["rel_hist"], st["abs_hist"], status, st["image_evals"], st["trace"])
