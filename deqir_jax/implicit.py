"""Gradients through a fixed point X* = f(X*, theta).

* :func:`implicit_solve`: ``jax.custom_vjp`` around a solver. Forward: ``solve(f(., theta), x0)``.
  Backward (implicit function theorem): solve the adjoint fixed point ``u = g + (df/dX)^T u`` at X* with
  a solver (by default the forward one), then return ``(df/dtheta)^T u`` for every array in theta
  (x_T, coefficients, model params, ...) and for arrays ``f`` closes over. x0 gets no gradient.
* :func:`phantom_solve`: DeqIR's one-step phantom gradient (spec section 7): solve without gradient,
  detach X*, then ``X_out = (1 - tau) X* + tau f(X*, theta)`` (``steps`` times); gradients reach theta
  only through those last map applications.

``solve`` is any ``solve(g, x0) -> SolverResult`` such as
``functools.partial(anderson_solve, m=5, max_iter=15, tol=1e-3)``.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax

from deqir_jax.anderson import SolverResult

Array = jax.Array
Solver = Callable[[Callable[[Array], Array], Array], SolverResult]
ParamMap = Callable[[Array, Any], Array]


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _implicit(f, solve, solve_adjoint, x0, theta, consts):
    return solve(lambda X: f(X, theta, *consts), x0)


def _implicit_fwd(f, solve, solve_adjoint, x0, theta, consts):
    result = solve(lambda X: f(X, theta, *consts), x0)
    return result, (result.solution, theta, consts)


def _implicit_bwd(f, solve, solve_adjoint, residuals, cotangent):
    x_star, theta, consts = residuals
    g = cotangent.solution.astype(x_star.dtype)
    _, vjp_x = jax.vjp(lambda X: f(X, theta, *consts), x_star)
    adjoint = solve_adjoint(lambda u: g + vjp_x(u)[0], g)
    _, vjp_params = jax.vjp(lambda th, cs: f(x_star, th, *cs), theta, consts)
    g_theta, g_consts = vjp_params(adjoint.solution)
    return None, g_theta, g_consts


_implicit.defvjp(_implicit_fwd, _implicit_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _implicit_structured(f, forward, solve_adjoint, x0, theta, consts, fwd_consts):
    return forward(x0, theta, *fwd_consts)


def _implicit_structured_fwd(f, forward, solve_adjoint, x0, theta, consts, fwd_consts):
    result = forward(x0, theta, *fwd_consts)
    return result, (result.solution, theta, consts, fwd_consts)


def _implicit_structured_bwd(f, forward, solve_adjoint, residuals, cotangent):
    x_star, theta, consts, fwd_consts = residuals
    _, g_theta, g_consts = _implicit_bwd(f, None, solve_adjoint, (x_star, theta, consts), cotangent)
    # the forward solver's own closure (e.g. the same network weights) is reached through f instead
    return None, g_theta, g_consts, jax.tree.map(jax.numpy.zeros_like, fwd_consts)


_implicit_structured.defvjp(_implicit_structured_fwd, _implicit_structured_bwd)


def implicit_solve(
    f: ParamMap,
    theta: Any,
    x0: Array,
    solve: Solver | None = None,
    solve_adjoint: Solver | None = None,
    *,
    forward: Callable[[Array, Any], SolverResult] | None = None,
) -> SolverResult:
    """Solve X = f(X, theta) from x0 with implicit (adjoint) differentiation w.r.t. theta.

    f(X (R, ...), theta) -> (R, ...); theta: any pytree. Returns the forward :class:`SolverResult`;
    differentiate through ``result.solution``. The forward solve is ``solve(f(., theta), x0)``, or, for a
    solver that needs more structure than the map (the windowed chain solves of
    :mod:`deqir_jax.triangular`), ``forward(x0, theta)``, which must find the fixed point of the same map.
    The adjoint solve uses ``solve_adjoint`` (default ``solve``) on ``u -> g + vjp_X(u)`` started at
    ``u = g``. Arrays ``f`` closes over also get gradients.
    """
    closed, consts = jax.closure_convert(f, x0, theta)
    if forward is None:
        if solve is None:
            raise ValueError("implicit_solve: give solve (a generic solver) or forward (a structured one)")
        return _implicit(closed, solve, solve_adjoint or solve, x0, theta, tuple(consts))
    if solve_adjoint is None:
        raise ValueError("implicit_solve: a structured forward needs solve_adjoint for the backward pass")
    fwd_closed, fwd_consts = jax.closure_convert(forward, x0, theta)
    return _implicit_structured(closed, fwd_closed, solve_adjoint, x0, theta, tuple(consts), tuple(fwd_consts))


def phantom_solve(
    f: ParamMap,
    theta: Any,
    x0: Array,
    solve: Solver,
    *,
    tau: float = 0.1,
    steps: int = 1,
) -> tuple[Array, SolverResult]:
    """DeqIR's phantom gradient: X* = solve(f(., theta), x0) without gradient, then ``steps`` damped
    updates X <- (1 - tau) X + tau f(X, theta) starting from the detached X*. Returns (X_out, result)."""
    if steps < 1:
        raise ValueError(f"phantom_solve: steps must be >= 1, got {steps}")
    frozen = jax.lax.stop_gradient(theta)
    result = solve(lambda X: f(X, frozen), jax.lax.stop_gradient(x0))
    x = jax.lax.stop_gradient(result.solution)
    for _ in range(steps):
        x = (1.0 - tau) * x + tau * f(x, theta)
    return x, jax.tree.map(jax.lax.stop_gradient, result)

