"""Chain solvers (deqir_jax.triangular) and SolverSettings.

A synthetic causal chain with a known solution (row k's direction is a nonlinear function of row k-1; the
states are a causal linear combination of the directions), then the DeqIR map of the official tiny UNet
fixture (configuration, operator and tolerance from the sidecar) against the sequential chain, and bad
settings. The 1 vs 8 device check of the default solver is in test_deqir_sample.py, its implicit gradient
in test_implicit.py.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqir_fixture_utils import SAMPLING_CASES, load_sampling_case, maxabs, nhwc, parse_tol
from deqir_jax import anderson, fixed_point as fp, solver_settings
from deqir_jax.solver_settings import DEFAULT, OFFICIAL_ANDERSON, SolverSettings
from deqir_jax.triangular import taa_update, triangular_solve

T, D = 12, 6


def _chain(seed: int = 0):
    """eval_rows / combine of a causal chain and its exact solution (sequential substitution)."""
    rng = np.random.default_rng(seed)
    x_in = jnp.asarray(rng.normal(size=(1, D)), jnp.float32)  # the fixed input of row 0
    w = jnp.asarray(rng.normal(size=(T, D, D)) / np.sqrt(D), jnp.float32)
    mix = jnp.asarray(np.tril(rng.uniform(0.2, 0.6, size=(T, T))), jnp.float32)  # causal combination
    offset = jnp.asarray(rng.normal(size=(T, D)), jnp.float32)

    def direction(x, k):  # (D,), () -> (D,)
        return jnp.tanh(w[k] @ x) + 0.1 * x

    def eval_rows(X, start, size):
        inputs = jnp.concatenate([x_in, X[:-1]], axis=0)
        rows = jax.lax.dynamic_slice_in_dim(inputs, start, size)
        ks = start + jnp.arange(size)
        return jax.vmap(direction)(rows, ks)

    def combine(E):
        return offset + mix @ E

    X = np.zeros((T, D), np.float32)
    E = np.zeros((T, D), np.float32)
    prev = np.asarray(x_in[0])
    for k in range(T):
        E[k] = np.asarray(direction(jnp.asarray(prev), k))
        X[k] = np.asarray(offset[k] + mix[k, : k + 1] @ jnp.asarray(E[: k + 1]))
        prev = X[k]
    return eval_rows, combine, jnp.asarray(X)


def _solve(window, m, *, row_tol=0.0, stop="residual", tol=0.0, x0_tol=0.0, max_iter=T, warm_start=0):
    eval_rows, combine, exact = _chain()
    fn = jax.jit(lambda x: triangular_solve(
        eval_rows, combine, x, jnp.ones((T,)), window=window, m=m, lam=1e-6, tol=tol, row_tol=row_tol,
        stop=stop, x0_tol=x0_tol, max_iter=max_iter, warm_start=warm_start, trace=True))
    return fn(jnp.zeros((T, D), jnp.float32)), exact


@pytest.mark.parametrize("window,m", [(T, 1), (4, 1), (T, 3), (3, 3), (1, 2)])
def test_exact_after_at_most_T_rounds(window, m):
    """Whatever the window and history, the first live row is exact each round: T rounds solve the chain."""
    res, exact = _solve(window, m)
    assert int(res.status) == anderson.CONVERGED
    assert int(res.n_evals) <= T
    assert int(res.image_evals) == int(res.n_evals) * window
    np.testing.assert_allclose(np.asarray(res.solution), np.asarray(exact), atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.x0_trace)[int(res.n_evals) - 1], np.asarray(exact)[-1], atol=1e-5)


def test_row_tolerance_freezes_rows_and_x0_stop():
    """A loose row tolerance and the x0 stop end the solve early, still close to the solution."""
    full, exact = _solve(T, 1)
    res, _ = _solve(4, 3, row_tol=1e-4, stop="x0", x0_tol=1e-5, max_iter=3 * T)
    assert int(res.status) == anderson.CONVERGED
    assert float(jnp.max(jnp.abs(res.solution - exact))) < 1e-3
    assert int(res.image_evals) < int(full.image_evals)
    # the residual history has one finite entry per round, NaN after
    hist = np.asarray(res.residuals)
    assert np.all(np.isfinite(hist[: int(res.n_evals)])) and np.all(np.isnan(hist[int(res.n_evals):]))


def test_warm_start_is_counted_and_reaches_the_solution():
    res, exact = _solve(4, 3, warm_start=3, max_iter=T)
    assert int(res.status) == anderson.CONVERGED
    n = int(res.n_evals)
    assert int(res.image_evals) == 3 + (n - 3) * 4  # three single-row calls, then windows of 4
    assert np.all(np.isnan(np.asarray(res.residuals)[:3]))  # warm-start rounds have no residual
    np.testing.assert_allclose(np.asarray(res.solution), np.asarray(exact), atol=1e-5)


def test_taa_update_on_a_linear_residual_is_a_secant_step():
    """With residuals r(x) = b - x (one row), two iterates determine the exact solution: gamma fits it."""
    b = jnp.asarray([[1.0, -2.0, 0.5]])
    xs = [jnp.zeros((1, 3)), jnp.asarray([[0.3, 0.1, -0.2]])]
    hx = jnp.stack(xs)
    hr = jnp.stack([b - x for x in xs])
    step = taa_update(hx, hr, jnp.int32(2), hr[-1], 0.0)
    np.testing.assert_allclose(np.asarray(xs[1] + step), np.asarray(b), atol=1e-5)
    # one iterate only: the plain residual (Picard)
    np.testing.assert_allclose(np.asarray(taa_update(hx, hr, jnp.int32(1), hr[-1], 0.0)), np.asarray(hr[-1]))


def test_chain_solvers_reach_the_sequential_chain_on_the_fixture_unet(load_fixture):
    """Every new solver, run to its exact end, gives the official sequential states (sidecar tolerance)."""
    case = load_sampling_case(load_fixture, SAMPLING_CASES[0])
    atol = parse_tol(case.meta["tolerance"]["converged fixed point vs seq/states"])
    coefs = fp.make_coefficients(case.op, case.x_T, case.y, case.z, case.t, case.at, case.at_next,
                                 nw=case.nw, etw=case.etw)
    seq = nhwc(case.fx["seq/states"])
    exact = dict(row_tol=0.0, stop="residual", tol=0.0, max_iter=case.T)
    variants = {
        "picard window": SolverSettings(method="picard", window=max(case.T // 3, 1), **exact),
        "triangular": SolverSettings(method="triangular", m=3, **exact),
        "triangular window warm": SolverSettings(method="triangular", m=3, window=max(case.T // 2, 1),
                                                 warm_start=min(2, case.T), **exact),
    }
    for name, settings in variants.items():
        res = jax.jit(lambda p, c, s=settings: fp.solve_parallel(
            lambda x, t: case.eps_apply(p, x, t), case.op, c, s))(case.params, coefs)
        assert int(res.status) == anderson.CONVERGED, name
        assert int(res.n_evals) <= case.T + settings.warm_start, name
        assert maxabs(res.solution, seq) < atol, (name, maxabs(res.solution, seq))
    # the default (x0 stop) ends close to the chain's x0 in at most T rounds
    res = jax.jit(lambda p, c: fp.solve_parallel(lambda x, t: case.eps_apply(p, x, t), case.op, c))(
        case.params, coefs)
    assert int(res.status) == anderson.CONVERGED and int(res.n_evals) <= case.T + 1
    assert maxabs(res.solution[-1:], seq[-1:]) < max(100 * atol, 10 * DEFAULT.x0_tol)


@pytest.mark.parametrize("field,value,message", [
    ("window", -1, "window must be >= 0"),
    ("row_tol", -1e-3, "row_tol must be >= 0"),
    ("tol", -1.0, "tol must be >= 0"),
    ("x0_tol", float("nan"), "x0_tol must be >= 0"),
    ("m", 0, "m \\(history\\) must be >= 1"),
    ("max_iter", -1, "max_iter must be an int >= 0"),
    ("warm_start", -2, "warm_start must be >= 0"),
    ("stop", "never", "stop must be one of"),
    ("method", "newton", "method must be one of"),
    ("beta", 0.0, "beta must be in"),
    ("chunk_size", -4, "chunk_size must be >= 0"),
])
def test_bad_settings_are_one_line_errors(field, value, message):
    with pytest.raises(ValueError, match=message) as err:
        SolverSettings(**{field: value})
    assert "\n" not in str(err.value)


def test_official_presets_and_config_round_trip():
    assert (OFFICIAL_ANDERSON.method, OFFICIAL_ANDERSON.m, OFFICIAL_ANDERSON.max_iter) == ("anderson", 5, 15)
    with pytest.raises(ValueError, match="need method 'picard' or 'triangular'"):
        dataclasses.replace(OFFICIAL_ANDERSON, window=4)
    with pytest.raises(ValueError, match="max_iter must be an int >= 2"):
        dataclasses.replace(OFFICIAL_ANDERSON, max_iter=0)
    assert DEFAULT.rounds(25) == 26 and dataclasses.replace(DEFAULT, max_iter=7).rounds(25) == 7
    cfg = solver_settings.to_config(DEFAULT)
    assert solver_settings.from_config(cfg) == DEFAULT
    cfg.window = 5
    assert solver_settings.from_config(cfg).window == 5
    with pytest.raises(ValueError, match="unknown solver setting\\(s\\) windw"):
        solver_settings.from_config({**DEFAULT.__dict__, "windw": 3})


def test_triangular_solve_rejects_bad_shapes():
    eval_rows, combine, _ = _chain()
    x = jnp.zeros((T, D), jnp.float32)
    common = dict(m=1, lam=0.0, tol=0.0, row_tol=0.0, stop="x0", x0_tol=0.0, max_iter=3)
    with pytest.raises(ValueError, match="window must be in 1..12"):
        triangular_solve(eval_rows, combine, x, jnp.ones(T), window=13, **common)
    with pytest.raises(ValueError, match="warm_start must be in 0..12"):
        triangular_solve(eval_rows, combine, x, jnp.ones(T), window=2, warm_start=13, **common)
