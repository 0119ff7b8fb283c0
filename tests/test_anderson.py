"""Anderson / Picard solvers on synthetic problems (no model): official semantics, stopping, divergence."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqir_jax import anderson

R, D = 4, 24  # rows (states) and entries per row


def _contraction(seed: int = 0, lip: float = 0.6):
    """Per-row nonlinear contraction f(X)_r = lip tanh(W_r X_r) + b_r with ||W_r|| = 1 (Lipschitz <= lip)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(R, D, D)) / np.sqrt(D)
    W /= np.linalg.norm(W, ord=2, axis=(1, 2))[:, None, None]
    b = rng.normal(size=(R, D))
    W32, b32 = jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32)

    def f(X):
        return lip * jnp.tanh(jnp.einsum("rij,rj->ri", W32, X, precision="highest")) + b32

    def f_np(X):
        return lip * np.tanh(np.einsum("rij,rj->ri", W, X)) + b

    return f, f_np


def _reference_anderson(f, x0, m, lam, beta, tol, max_iter):
    """Plain NumPy float64 transcription of the official algorithm (spec section 5)."""
    X = np.zeros((R, m, D))
    F = np.zeros((R, m, D))
    X[:, 0] = x0
    F[:, 0] = f(x0)
    X[:, 1] = F[:, 0]
    F[:, 1] = f(F[:, 0])
    res = [np.linalg.norm(F[:, i] - X[:, i]) / (1e-5 + np.linalg.norm(F[:, i])) for i in range(2)]
    k = 1
    for k in range(2, max_iter):
        n = min(k, m)
        G = F[:, :n] - X[:, :n]
        H = np.zeros((R, n + 1, n + 1))
        H[:, 0, 1:] = H[:, 1:, 0] = 1
        H[:, 1:, 1:] = G @ G.transpose(0, 2, 1) + lam * np.eye(n)
        rhs = np.zeros((R, n + 1))
        rhs[:, 0] = 1
        alpha = np.linalg.solve(H, rhs[..., None])[:, 1:, 0]
        X[:, k % m] = beta * np.einsum("rn,rnd->rd", alpha, F[:, :n]) + (1 - beta) * np.einsum(
            "rn,rnd->rd", alpha, X[:, :n])
        F[:, k % m] = f(X[:, k % m])
        res.append(np.linalg.norm(F[:, k % m] - X[:, k % m]) / (1e-5 + np.linalg.norm(F[:, k % m])))
        if res[-1] < tol:
            break
    return X[:, k % m], np.asarray(res)


@pytest.mark.parametrize("m,beta,tol,max_iter", [(5, 1.0, 1e-5, 30), (3, 0.9, 1e-4, 12), (2, 1.0, 1e-5, 25)])
def test_matches_official_algorithm(m, beta, tol, max_iter):
    f, f_np = _contraction()
    x0 = np.zeros((R, D))
    ref_x, ref_res = _reference_anderson(f_np, x0, m, 1e-3, beta, tol, max_iter)
    res = jax.jit(lambda x: anderson.anderson_solve(f, x, m=m, lam=1e-3, beta=beta, tol=tol,
                                                    max_iter=max_iter))(jnp.asarray(x0, jnp.float32))
    n = int(res.n_evals)
    assert n == len(ref_res)
    np.testing.assert_allclose(np.asarray(res.residuals)[:n], ref_res, rtol=2e-2, atol=1e-6)
    np.testing.assert_allclose(np.asarray(res.solution), ref_x, atol=1e-5)
    assert np.all(np.isnan(np.asarray(res.residuals)[n:]))
    assert np.all(np.isnan(np.asarray(res.abs_residuals)[n:]))
    expected = anderson.CONVERGED if ref_res[-1] < tol else anderson.MAX_ITER
    assert int(res.status) == expected


def test_converges_on_contraction_faster_than_picard():
    """Symmetric contraction with eigenvalues up to 0.95 plus a small nonlinearity. With the official
    absolute lam = 1e-3 the mixing degrades to plain averaging once ||F - X||^2 < lam, so a small lam
    is used to show the acceleration."""
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(R, D, D)))[0]
    w = jnp.asarray(np.einsum("rij,rj,rkj->rik", q, rng.uniform(-0.95, 0.95, (R, D)), q), jnp.float32)
    b = jnp.asarray(rng.normal(size=(R, D)), jnp.float32)
    f = lambda X: jnp.einsum("rij,rj->ri", w, X, precision="highest") + 0.1 * jnp.tanh(X) + b
    x0 = jnp.zeros((R, D), jnp.float32)
    a = anderson.anderson_solve(f, x0, m=5, lam=1e-8, tol=1e-5, max_iter=300)
    p = anderson.picard_solve(f, x0, tol=1e-5, max_iter=300)
    assert int(a.status) == anderson.CONVERGED and int(p.status) == anderson.CONVERGED
    assert int(a.n_evals) < int(p.n_evals) // 3
    assert float(jnp.max(jnp.abs(f(a.solution) - a.solution))) < 1e-3
    assert float(jnp.max(jnp.abs(a.solution - p.solution))) < 1e-2
    anderson.check_result(a, require_convergence=True)


def test_stopping_is_checked_from_third_evaluation_only():
    """A fixed point as x0: residual 0 at evaluations 1 and 2, the official loop still runs one more."""
    x0 = jnp.ones((R, D), jnp.float32)
    res = anderson.anderson_solve(lambda x: x, x0, tol=1e-3, max_iter=10)
    assert int(res.n_evals) == 3 and int(res.status) == anderson.CONVERGED
    np.testing.assert_array_equal(np.asarray(res.solution), np.asarray(x0))


def test_picard_exact_on_triangular_map():
    """Row k depends on rows < k only (like DeqIR's chain): exact after R evaluations, residual 0 after."""
    rng = np.random.default_rng(3)
    c = jnp.asarray(rng.normal(size=(R, D)), jnp.float32)

    def f(X):
        prev = jnp.concatenate([jnp.zeros((1, D), X.dtype), X[:-1]], axis=0)
        return jnp.sin(3.0 * prev) + c

    res = anderson.picard_solve(f, jnp.zeros((R, D), jnp.float32), max_iter=R + 2)  # tol 0
    hist = np.asarray(res.abs_residuals)
    # the residual is exactly 0 at evaluation R + 1: converged there even with tol 0 (not max_iter)
    assert int(res.status) == anderson.CONVERGED and int(res.n_evals) == R + 1
    assert hist[R] == 0.0 and hist[R - 1] > 0 and np.isnan(hist[R + 1])
    assert float(jnp.max(jnp.abs(f(res.solution) - res.solution))) == 0.0
    early = anderson.picard_solve(f, jnp.zeros((R, D), jnp.float32), tol=1e-30, max_iter=R + 2)
    assert int(early.status) == anderson.CONVERGED and int(early.n_evals) == R + 1


@pytest.mark.parametrize("solver", ["anderson", "picard"])
def test_expanding_map_reports_divergence(solver):
    """f(x) - x = x^2 + 1 >= 1: no fixed point; the iterates blow up and the loop stops at once."""
    x0 = jax.random.normal(jax.random.PRNGKey(0), (R, D))
    f = lambda x: x * x + x + 1.0
    solve = anderson.anderson_solve if solver == "anderson" else anderson.picard_solve
    res = jax.jit(lambda x: solve(f, x, max_iter=40))(x0)
    n = int(res.n_evals)
    assert int(res.status) in (anderson.DIVERGED, anderson.NOT_FINITE)
    assert n < 40
    assert np.all(np.isnan(np.asarray(res.residuals)[n:]))
    with pytest.raises(anderson.SolverDivergedError, match=f"map evaluation {n}"):
        anderson.check_result(res)


def test_nan_stops_immediately():
    calls = []

    def f(x):
        calls.append(1)
        return x * jnp.nan

    res = anderson.anderson_solve(f, jnp.ones((R, D), jnp.float32), max_iter=15)
    assert int(res.status) == anderson.NOT_FINITE and int(res.n_evals) == 1
    with pytest.raises(anderson.SolverDivergedError, match="NaN/inf at map evaluation 1"):
        anderson.check_result(res)
    res = anderson.picard_solve(f, jnp.ones((R, D), jnp.float32), max_iter=15)
    assert int(res.status) == anderson.NOT_FINITE and int(res.n_evals) == 1


@pytest.mark.parametrize("solver", ["anderson", "picard"])
def test_tol_zero_stops_at_an_exact_fixed_point(solver):
    """A residual <= tol counts as converged: with tol 0 a map whose fixed point is reached exactly stops there
    (Anderson checks from its third evaluation on, Picard from its first) instead of running max_iter."""
    f = lambda x: jnp.zeros_like(x)  # noqa: E731 - reached exactly after one evaluation
    solve = anderson.anderson_solve if solver == "anderson" else anderson.picard_solve
    res = solve(f, jnp.ones((R, D), jnp.float32), tol=0.0, max_iter=10)
    assert int(res.status) == anderson.CONVERGED
    n = int(res.n_evals)
    assert n == (3 if solver == "anderson" else 2)
    assert float(res.residuals[n - 1]) == 0.0 and float(res.abs_residuals[n - 1]) == 0.0
    anderson.check_result(res, require_convergence=True)


def test_max_iter_status_and_check_result():
    f, _ = _contraction(2)
    res = anderson.anderson_solve(f, jnp.zeros((R, D), jnp.float32), tol=0.0, max_iter=4)
    assert int(res.status) == anderson.MAX_ITER and int(res.n_evals) == 4
    anderson.check_result(res)  # not converged is fine by default
    with pytest.raises(anderson.SolverDivergedError, match="did not converge in 4 map evaluations"):
        anderson.check_result(res, require_convergence=True)


def test_compiles_once_for_many_inputs():
    traces = []
    f0, _ = _contraction(4)

    def f(x):
        traces.append(1)
        return f0(x)

    solve = jax.jit(lambda x, tol: anderson.anderson_solve(f, x, tol=tol, max_iter=20))
    for seed in range(3):
        x0 = jax.random.normal(jax.random.PRNGKey(seed), (R, D))
        solve(x0, 1e-4 * (seed + 1))
    assert len(traces) == 2  # set-up evaluation + loop body, traced once for all calls


def test_state_with_image_shape_and_float64():
    with jax.enable_x64(True):
        f, _ = _contraction(5)
        x0 = jnp.zeros((R, 2, 3, 4), jnp.float64)
        g = lambda x: f(x.reshape(R, D).astype(jnp.float32)).astype(jnp.float64).reshape(x.shape)
        res = anderson.anderson_solve(g, x0, tol=1e-6, max_iter=30)
        assert res.solution.shape == x0.shape and res.solution.dtype == jnp.float64
        assert res.residuals.dtype == jnp.float64
        assert int(res.status) == anderson.CONVERGED


def test_bad_arguments():
    x0 = jnp.zeros((R, D), jnp.float32)
    with pytest.raises(ValueError, match="max_iter must be an int >= 2"):
        anderson.anderson_solve(lambda x: x, x0, max_iter=1)
    with pytest.raises(ValueError, match="m \\(history size\\) must be an int >= 2"):
        anderson.anderson_solve(lambda x: x, x0, m=1)
    with pytest.raises(ValueError, match="floating point"):
        anderson.picard_solve(lambda x: x, jnp.zeros((R, D), jnp.int32))


def test_singular_mixing_system_falls_back_to_the_uniform_weights():
    """Rows whose residuals vanished give a singular bordered system without lam; they take the lam -> 0+ limit
    of the regularised weights for a vanishing Gram matrix (the uniform mean), the others are untouched."""
    X = jnp.zeros((2, 3, 4))
    F = X.at[1].set(jax.random.normal(jax.random.PRNGKey(0), (3, 4)))  # row 0: F == X exactly
    alpha = anderson._mixing_weights(X, F, jnp.int32(3), 0.0)
    np.testing.assert_allclose(np.asarray(alpha[0]), np.full(3, 1 / 3), rtol=1e-6)
    ref = anderson._mixing_weights(X[1:], F[1:], jnp.int32(3), 0.0)
    np.testing.assert_allclose(np.asarray(alpha[1]), np.asarray(ref[0]), rtol=1e-6)
    np.testing.assert_allclose(float(jnp.sum(alpha[1])), 1.0, rtol=1e-5)
