"""``deqir_jax.restore``: the one-call restore (``restore_measurement``), its settings and its jitted forms.

Everything about the case (operator, eps model, T, nw, etw, tolerances) is read from the sampling fixture
``deqir/deqir_sampling_<SAMPLING_CASES[0]>`` and its sidecar.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

from deqir_fixture_utils import SAMPLING_CASES, load_sampling_case, load_tiny_unet, nhwc, parse_tol
from deqir_jax import anderson, fixed_point
from deqir_jax.restore import ChainSettings, chain_schedule, make_restore_fn, restore_measurement
from deqir_jax.solver_settings import OFFICIAL_ANDERSON, SolverSettings
from ircore import mesh


@pytest.fixture(scope="module")
def case(load_fixture):
    return load_sampling_case(load_fixture, SAMPLING_CASES[0])


def _eps_fn(case):
    return lambda x, t: case.eps_apply(case.params, x, t)


def test_chain_schedule_is_the_fixture_schedule(case):
    """(t, abar(t), abar(next t)) of the official T-step chain, noisiest first, as the fixture recorded."""
    t, at, at_next = chain_schedule(case.T)
    assert t.dtype == np.int32 and t.shape == at.shape == at_next.shape == (case.T,)
    np.testing.assert_array_equal(t, np.asarray(case.t))
    np.testing.assert_allclose(at, np.asarray(case.at), rtol=1e-6)
    np.testing.assert_allclose(at_next, np.asarray(case.at_next), rtol=1e-6)
    assert np.all(np.diff(t) < 0) and at_next[-1] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def sequential_out(case):
    settings = ChainSettings(timesteps=case.T, nw=case.nw, etw=case.etw, sampler="sequential")
    return jax.jit(lambda *a: restore_measurement(_eps_fn(case), *a, settings))(case.op, case.y, case.x_T, case.z)


def test_restore_measurement_parallel_equals_sequential_on_fixture(case, sequential_out):
    """The fixed point reached by restore_measurement (Picard, T evaluations) is the sequential chain, and
    the sequential restore is the fixture's sequential DDIM + DDNM trajectory."""
    atol = parse_tol(case.meta["tolerance"]["converged fixed point vs seq/states"])
    exact = SolverSettings(method="picard", tol=0.0, max_iter=case.T, stop="residual", row_tol=0.0)
    par = ChainSettings(sampler="parallel", solver=exact, timesteps=case.T, nw=case.nw, etw=case.etw)
    out_p = jax.jit(lambda *a: restore_measurement(_eps_fn(case), *a, par))(case.op, case.y, case.x_T, case.z)
    out_s = sequential_out
    assert int(out_p.n_evals) == case.T
    np.testing.assert_allclose(np.asarray(out_s.states), nhwc(case.fx["seq/states"]), atol=atol)
    np.testing.assert_allclose(np.asarray(out_p.x0), np.asarray(out_s.x0), atol=atol)
    assert int(out_p.image_evals) == case.T * case.T and int(out_s.image_evals) == case.T


def test_sequential_restore_bookkeeping(case, sequential_out):
    """sampler="sequential": x0 is the last state, T evaluations, status converged, no residual history
    (NaN, as long as the parallel solve's round budget)."""
    out = sequential_out
    rounds = ChainSettings(timesteps=case.T).solver.rounds(case.T)
    assert out.states.shape == (case.T,) + case.x_T.shape[1:]
    np.testing.assert_array_equal(np.asarray(out.x0), np.asarray(out.states[-1:]))
    assert int(out.n_evals) == case.T and int(out.image_evals) == case.T
    assert int(out.status) == anderson.CONVERGED
    assert out.residuals.shape == (rounds,) and np.all(np.isnan(np.asarray(out.residuals)))
    assert np.all(np.isnan(np.asarray(out.abs_residuals)))


def test_make_restore_fn_is_restore_measurement_of_the_model(load_fixture, case):
    """make_restore_fn(model, settings)(params, ...) == restore_measurement(eps_fn_from_model(model, params), ...)
    (two chain steps keep the compile short)."""
    model, params = load_tiny_unet(load_fixture)
    settings = ChainSettings(timesteps=2, nw=case.nw, etw=case.etw, sampler="sequential")
    got = make_restore_fn(model, settings)(params, case.op, case.y, case.x_T, case.z)
    eps_fn = fixed_point.eps_fn_from_model(model, params)
    want = jax.jit(lambda *a: restore_measurement(eps_fn, *a, settings))(case.op, case.y, case.x_T, case.z)
    atol = parse_tol(case.meta["tolerance"]["converged fixed point vs seq/states"])
    np.testing.assert_allclose(np.asarray(got.states), np.asarray(want.states), atol=atol)
    assert int(got.n_evals) == 2


@pytest.mark.slow  # ~80 s on 2 cores: three solvers compiled for two meshes
def test_restore_measurement_sharded_over_8_devices_equals_one_device(case):
    eps_fn = _eps_fn(case)
    # the default solver (triangular Anderson, x0 stop), the same on a window of T/2 rows, the official Anderson
    for solver in (SolverSettings(max_iter=6), SolverSettings(max_iter=6, window=max(case.T // 2, 1)),
                   OFFICIAL_ANDERSON):
        _check_one_vs_eight(case, eps_fn, ChainSettings(timesteps=case.T, nw=case.nw, etw=case.etw, solver=solver))


def _check_one_vs_eight(case, eps_fn, settings):
    one = mesh.time_sharding(mesh.make_mesh(devices=jax.devices()[:1]))
    eight = mesh.time_sharding(mesh.make_mesh(devices=jax.devices()[:8]))
    assert len(jax.devices()) >= 8
    outs = [jax.jit(lambda *a, s=s: restore_measurement(eps_fn, *a, settings, sharding=s))(
        case.op, case.y, case.x_T, case.z) for s in (one, eight)]
    np.testing.assert_allclose(np.asarray(outs[0].states), np.asarray(outs[1].states), atol=1e-4)
    assert int(outs[0].n_evals) == int(outs[1].n_evals)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sampler="ancestral"), "sampler must be one of"),
    (dict(timesteps=0), "timesteps must be >= 1"),
    (dict(solver={"method": "picard"}), "solver must be a SolverSettings"),
])
def test_chain_settings_refuse_bad_values_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        ChainSettings(**kwargs)
    assert "\n" not in str(err.value)


def test_restore_measurement_wants_one_image(case):
    with pytest.raises(ValueError, match=r"x_T must be one NHWC image"):
        restore_measurement(_eps_fn(case), case.op, case.y, case.x_T[0], case.z, ChainSettings(timesteps=case.T))
