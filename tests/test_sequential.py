"""``deqir_jax.sequential``: the T-step DDIM + DDNM chain DeqIR solves in parallel.

Against the official fixtures (``deqir/deqir_sampling_*``: operator, eps model, nw/etw, T and tolerances
from the sidecar), and on a network-free eps model against a plain NumPy transcription of the step.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqir_fixture_utils import SAMPLING_CASES, load_sampling_case, load_tiny_unet, maxabs, nhwc, parse_tol
from deqir_jax import operators as ops
from deqir_jax import sequential
from deqir_jax.restore import chain_schedule


@pytest.fixture(scope="module")
def tiny(load_fixture):
    return load_tiny_unet(load_fixture)


@pytest.fixture(scope="module", params=SAMPLING_CASES)
def case(request, load_fixture, tiny):
    return load_sampling_case(load_fixture, request.param, tiny)


def _map_atol(meta) -> float:
    tol = meta["tolerance"]
    key = next(k for k in tol if k.startswith("map/f_init"))
    return parse_tol(tol[key])


@partial(jax.jit, static_argnums=(0,))
def _sequential(eps_apply, params, op, x_T, y, z, t, at, at_next, nw, etw):
    return sequential.sequential_sample(lambda x, tt: eps_apply(params, x, tt), op, x_T, y, z, t, at, at_next,
                                        nw=nw, etw=etw)


def test_sequential_sampler_matches_official(case):
    c, fx = case, case.fx
    atol = _map_atol(c.meta)
    out = _sequential(c.eps_apply, c.params, c.op, c.x_T, c.y, c.z, c.t, c.at, c.at_next, c.nw, c.etw)
    assert out.states.shape == (c.T,) + c.x_T.shape
    err = {k: maxabs(getattr(out, k)[:, 0], nhwc(fx[f"seq/{k}"])) for k in ("states", "eps", "x0_hat")}
    print(f"{c.meta['file']}: sequential {err} (atol {atol:.0e})")
    assert max(err.values()) < atol
    assert maxabs(out.x0, out.states[-1]) == 0.0
    if "ddnm_official/x0" in fx:  # eta = 0: DDNM's own sampler
        assert maxabs(out.x0, nhwc(fx["ddnm_official/x0"])) < atol


# ------------------------------------------------------------------------------------------ no network
def _toy_eps(x, t):
    """A network-free eps model: depends on x and t, returns one extra channel (C' > C is allowed)."""
    scale = 0.1 + t.astype(x.dtype)[:, None, None, None] / 2000.0
    return jnp.concatenate([scale * x, jnp.ones_like(x[..., :1])], axis=-1)


def _numpy_chain(op, x_T, y, z, t, at, at_next, nw, etw):
    """The step of the module docstring, written out in float64 NumPy (op applied through jnp)."""
    x = np.asarray(x_T, np.float64)
    states = []
    for t_i, a, b in zip(t, at, at_next):
        eps = np.asarray(_toy_eps(jnp.asarray(x), jnp.full((x.shape[0],), t_i, jnp.int32)), np.float64)[..., :3]
        x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
        x0_hat = x0 - np.asarray(op.A_pinv(op.A(jnp.asarray(x0, jnp.float32)) - y), np.float64)
        x = np.sqrt(b) * x0_hat + np.sqrt(1 - b) * nw * np.asarray(z) + np.sqrt(1 - b) * np.sqrt(1 - etw**2) * eps
        states.append(x)
    return np.stack(states)


@pytest.mark.parametrize("nw, etw", [(0.0, 0.0), (0.3, 0.1)])
def test_sequential_sample_is_the_documented_step(nw, etw):
    T, size = 5, 8
    op = ops.make_operator("sr_averagepooling", size, factor=2)
    rng = np.random.default_rng(0)
    x_T, z = (jnp.asarray(rng.standard_normal((2, size, size, 3)), jnp.float32) for _ in range(2))
    y = op.A(jnp.asarray(rng.uniform(-1, 1, (2, size, size, 3)), jnp.float32))
    t, at, at_next = chain_schedule(T)
    out = sequential.sequential_sample(_toy_eps, op, x_T, y, z, t, at, at_next, nw=nw, etw=etw)
    assert out.states.shape == out.eps.shape == out.x0_hat.shape == (T, 2, size, size, 3)
    want = _numpy_chain(op, x_T, y, z, t, at, at_next, nw, etw)
    np.testing.assert_allclose(np.asarray(out.states), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(out.x0), np.asarray(out.states[-1]))
    # DDNM rectification: every x0_hat is consistent with y
    np.testing.assert_allclose(np.asarray(op.A(out.x0_hat)), np.broadcast_to(np.asarray(y), (T,) + y.shape),
                               atol=1e-4)
    # images of a batch do not interact
    one = sequential.sequential_sample(_toy_eps, op, x_T[1:], y[1:], z[1:], t, at, at_next, nw=nw, etw=etw)
    np.testing.assert_allclose(np.asarray(one.states[:, 0]), np.asarray(out.states[:, 1]), rtol=1e-5, atol=1e-5)


def test_step_weights_numbers():
    at_next = jnp.asarray([0.25, 0.64, 1.0])
    c1, c2 = sequential.step_weights(at_next, nw=0.5, etw=0.6)
    np.testing.assert_allclose(np.asarray(c1), np.sqrt(1 - np.asarray(at_next)) * 0.5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(c2), np.sqrt(1 - np.asarray(at_next)) * 0.8, rtol=1e-6)
    assert float(c1[-1]) == 0.0 and float(c2[-1]) == 0.0  # the last step lands on x0_hat


def test_bad_shapes_are_one_line_errors():
    op = ops.make_operator("denoising", 4)
    x = jnp.zeros((1, 4, 4, 3))
    t, at, at_next = chain_schedule(3)
    for args, message in (
        ((x[0], x, x, t, at, at_next), "x_T must be an NHWC batch"),
        ((x, x, x[..., :2], t, at, at_next), "z must have the shape of x_T"),
        ((x, x, x, t, at[:2], at_next), "t, at, at_next must be 1-D of equal length"),
    ):
        with pytest.raises(ValueError, match=message) as err:
            sequential.sequential_sample(_toy_eps, op, args[0], args[1], args[2], *args[3:])
        assert "\n" not in str(err.value)
