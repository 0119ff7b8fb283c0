"""Implicit (adjoint) and phantom gradients through the DeqIR fixed point.

The implicit gradient of x_0 w.r.t. x_T (and w.r.t. the model parameters) must equal ``jax.grad`` through
the unrolled sequential sampler, since the fixed point IS that chain. Models: a one-level ADM UNet built from
a config (fast test) and the fixture's tiny UNet through the user-facing converter (slow test), on 8x8
images with T = 4.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqir_fixture_utils import load_tiny_unet
from deqir_jax import anderson, fixed_point as fp, operators as ops, schedule, sequential
from deqir_jax.implicit import implicit_solve, phantom_solve
from deqir_jax.solver_settings import DEFAULT, SolverSettings
from deqir_jax.models import adm

SIZE, T = 8, 4
REL_ERR = 1e-3


def _rel_err(a, b) -> float:
    a = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(a)])
    b = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(b)])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _mini_adm():
    """One-level ADM UNet (no attention), random weights: the cheapest model with the real structure."""
    cfg = adm.guided_diffusion_model_config(
        image_size=SIZE, num_channels=32, num_res_blocks=1, channel_mult="1", attention_resolutions="",
        learn_sigma=True, use_scale_shift_norm=True, resblock_updown=True, num_head_channels=-1)
    model = adm.model_from_config(cfg)
    params = model.init(jax.random.PRNGKey(7), *adm.dummy_inputs(model))["params"]
    # the last conv starts at zero in guided-diffusion; give it weights so eps depends on x
    params = dict(params)
    out = params["out_2"]
    params["out_2"] = {k: 0.05 * jax.random.normal(jax.random.PRNGKey(8), v.shape) for k, v in out.items()}
    return model, params


def _setup(model, params, size: int = SIZE):
    abar = schedule.abar_padded(schedule.linear_betas())
    t, next_t = schedule.timestep_sequence(T)
    op = ops.make_operator("sr_averagepooling", size, factor=2)
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    x_T = jax.random.normal(k[0], (1, size, size, 3))
    z = jax.random.normal(k[1], (1, size, size, 3))
    y = op.A(jnp.tanh(jax.random.normal(k[2], (1, size, size, 3))))
    w = jax.random.normal(k[3], (1, size, size, 3))
    sched = dict(t=jnp.asarray(t, jnp.int32), at=jnp.asarray(abar[t + 1]), at_next=jnp.asarray(abar[next_t + 1]))
    return dict(model=model, params=params, op=op, x_T=x_T, z=z, y=y, w=w, nw=0.2, etw=0.3, **sched)


@pytest.fixture(scope="module")
def setup(load_fixture):
    """The fixture's tiny UNet at the image size it was built for (any depth of network)."""
    size = int(load_fixture("deqir/tiny_unet").meta["constructor_kwargs"]["image_size"])
    return _setup(*load_tiny_unet(load_fixture), size=size)


@pytest.fixture(scope="module")
def mini_setup():
    return _setup(*_mini_adm())


def _eps(model, params):
    return lambda x, t: model.apply({"params": params}, x, t)


def _unrolled_loss(x_T, params, s):
    out = sequential.sequential_sample(_eps(s["model"], params), s["op"], x_T, s["y"], s["z"], s["t"], s["at"],
                                       s["at_next"], nw=s["nw"], etw=s["etw"])
    return jnp.sum(s["w"] * out.x0)


def _implicit_loss(x_T, params, s, forward, backward):
    coefs = fp.make_coefficients(s["op"], x_T, s["y"], s["z"], s["t"], s["at"], s["at_next"], nw=s["nw"],
                                 etw=s["etw"])

    def f(X, theta):
        c, p = theta
        return fp.deq_map(_eps(s["model"], p), s["op"], c, X)

    x0 = fp.initial_states(x_T, T)
    if isinstance(forward, SolverSettings):  # a chain solve of deqir_jax.triangular: structured forward
        chain = lambda X0, theta: fp.solve_parallel(_eps(s["model"], theta[1]), s["op"], theta[0], forward, x_init=X0)
        res = implicit_solve(f, (coefs, params), x0, solve_adjoint=backward, forward=chain)
    else:
        res = implicit_solve(f, (coefs, params), x0, forward, backward)
    return jnp.sum(s["w"] * res.solution[-1:]), res


def _check_against_unrolled(s):
    grad_ref = jax.jit(jax.grad(lambda x, p: _unrolled_loss(x, p, s), argnums=(0, 1)))(s["x_T"], s["params"])
    picard = partial(anderson.picard_solve, max_iter=T)
    tight = partial(anderson.anderson_solve, m=5, lam=1e-8, tol=1e-6, max_iter=3 * T)
    # the default chain solver (triangular Anderson, here on a 2-row window), run to the exact fixed point
    chain = dataclasses.replace(DEFAULT, window=2, row_tol=0.0, stop="residual", tol=0.0, max_iter=T)
    for name, fwd, bwd in [("picard/picard", picard, picard), ("anderson/anderson", tight, tight),
                           ("default/picard", chain, picard)]:
        fn = jax.jit(jax.value_and_grad(lambda x, p: _implicit_loss(x, p, s, fwd, bwd), argnums=(0, 1),
                                        has_aux=True))
        (loss, res), (g_x, g_p) = fn(s["x_T"], s["params"])
        err_x = _rel_err(g_x, grad_ref[0])
        err_p = _rel_err(g_p, grad_ref[1])
        print(f"{name}: forward {int(res.n_evals)} evals, rel. error grad x_T {err_x:.2e}, params {err_p:.2e}")
        assert err_x < REL_ERR and err_p < REL_ERR
        assert abs(float(loss) - float(_unrolled_loss(s["x_T"], s["params"], s))) < 1e-3 * abs(float(loss))


def test_implicit_gradient_matches_unrolled_sequential_mini_unet(mini_setup):
    _check_against_unrolled(mini_setup)


@pytest.mark.slow
def test_implicit_gradient_matches_unrolled_sequential_tiny_unet(setup):
    _check_against_unrolled(setup)


def test_implicit_gradient_of_closed_over_arrays():
    """Arrays the map closes over (here a scale) get gradients too (closure conversion)."""
    b = jnp.asarray([0.5, -1.0, 2.0])

    def solve_for(scale):
        f = lambda X, theta: 0.5 * jnp.tanh(X) * scale + theta
        res = implicit_solve(f, b, jnp.zeros(3), partial(anderson.picard_solve, tol=1e-7, max_iter=200))
        return jnp.sum(res.solution)

    scale = jnp.float32(0.8)
    g = jax.grad(solve_for)(scale)
    eps = 1e-3
    fd = (solve_for(scale + eps) - solve_for(scale - eps)) / (2 * eps)
    assert abs(float(g) - float(fd)) < 1e-2 * abs(float(fd))


def test_phantom_gradient_is_the_linear_all_xT_term(mini_setup):
    """Official one-step phantom gradient on the (T+1)-row inversion map: the x_T gradient is
    2 tau sqrt(b_last / a_0) (I - A^+A)(x_out[-1] - target); the model Jacobian does not enter."""
    s = mini_setup
    tau = 0.1
    target = jnp.tanh(s["w"])

    def loss(x_T):
        coefs = fp.make_coefficients(s["op"], x_T, s["y"], s["z"], s["t"], s["at"], s["at_next"], inversion=True)
        f = lambda X, c: fp.deq_inversion_map(_eps(s["model"], s["params"]), s["op"], c, X)
        solve = partial(anderson.anderson_solve, m=3, lam=1e-3, max_iter=15, tol=1e-2, beta=0.9)
        x_out, res = phantom_solve(f, coefs, fp.initial_states(x_T, T, inversion=True), solve, tau=tau)
        return jnp.sum((x_out[-1:] - target) ** 2), x_out

    (value, x_out), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(s["x_T"])
    ratio = jnp.sqrt(s["at_next"][-1] / s["at"][0])
    expected = 2 * tau * ratio * s["op"].null(x_out[-1:] - target)
    scale = float(jnp.max(jnp.abs(expected)))
    assert float(jnp.max(jnp.abs(grad - expected))) < 1e-5 * scale
    assert x_out.shape == (T + 1, SIZE, SIZE, 3)
    np.testing.assert_allclose(np.asarray(x_out[0]), np.asarray(s["x_T"][0]), atol=1e-6)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        phantom_solve(lambda X, c: X, 0.0, jnp.zeros(2), anderson.picard_solve, steps=0)
