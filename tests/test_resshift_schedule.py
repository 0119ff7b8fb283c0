"""ResShift schedule vs the official float64 arrays (fixture ``resshift/diffusion_schedules``)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resshift_jax import schedule as sch

ARRAY_FIELDS = (
    "sqrt_etas", "etas", "etas_prev", "alpha", "posterior_variance", "posterior_variance_clipped",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "weight_loss_mse",
    "input_scale_std",
)


@pytest.fixture(scope="module")
def fx(load_fixture):
    return load_fixture("resshift/diffusion_schedules")


def _tags(fx):
    return sorted(fx.meta["params_per_tag"])


def test_fixture_has_tags(fx):
    tags = _tags(fx)
    assert len(tags) >= 1
    for tag in tags:
        assert f"{tag}/sqrt_etas" in fx


def test_every_tag_matches(fx):
    checked = 0
    for tag in _tags(fx):
        sched = sch.schedule_from_config(fx.meta["params_per_tag"][tag])
        for field in ARRAY_FIELDS:
            key = f"{tag}/{field}"
            assert key in fx, key
            want = fx[key]
            got = np.asarray(getattr(sched, field))
            assert got.dtype == np.float64
            assert got.shape == want.shape, key
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=key)
            checked += 1
        np.testing.assert_array_equal(sched.timestep_map, fx[f"{tag}/timestep_map"], err_msg=tag)
        np.testing.assert_allclose(sched.prior_std, fx[f"{tag}/prior_std"], rtol=1e-12, atol=0, err_msg=tag)
        assert sched.num_timesteps == fx[f"{tag}/sqrt_etas"].shape[0]
    assert checked == len(ARRAY_FIELDS) * len(_tags(fx))


def test_exponential_formula_closed_form():
    steps, mnl, end, kappa, p = 7, 0.1, 0.9, 2.0, 0.4
    got = sch.exponential_sqrt_etas(steps, mnl, end, kappa, p)
    start = min(mnl / kappa, mnl)
    ts = np.arange(1, steps + 1)
    want = start * (end / start) ** (((ts - 1) / (steps - 1)) ** p)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == pytest.approx(start, rel=1e-15)
    assert got[-1] == pytest.approx(end, rel=1e-12)


def test_space_timesteps():
    assert sch.space_timesteps(15, 5) == [0, 3, 6, 9, 12]
    assert sch.space_timesteps(4, 4) == [0, 1, 2, 3]
    assert sch.space_timesteps(10, 3) == [0, 3, 6]
    with pytest.raises(ValueError, match="timestep_respacing"):
        sch.space_timesteps(4, 5)


def test_schedule_is_a_pytree_for_jit():
    sched = sch.make_schedule(steps=4, min_noise_level=0.2, kappa=2.0, power=0.3)
    leaves = jax.tree_util.tree_leaves(sched)
    assert len(leaves) == 15

    @jax.jit
    def f(s, t):
        return s.etas[t] * s.kappa

    np.testing.assert_allclose(f(sched, jnp.asarray(2)), sched.etas[2] * 2.0, rtol=1e-6)
    with pytest.raises(Exception):
        sched.kappa = 3.0  # frozen


def test_posterior_identities():
    sched = sch.make_schedule(steps=6, min_noise_level=0.1, kappa=1.5, power=0.5)
    np.testing.assert_allclose(sched.posterior_mean_coef1 + sched.posterior_mean_coef2, 1.0, rtol=1e-14)
    np.testing.assert_allclose(np.cumsum(sched.alpha), sched.etas, rtol=1e-13)
    assert sched.posterior_variance[0] == 0.0
    assert sched.posterior_variance_clipped[0] == sched.posterior_variance[1]


def test_bad_input_errors():
    with pytest.raises(ValueError, match="predict_type"):
        sch.make_schedule(steps=4, min_noise_level=0.2, predict_type="velocity")
    with pytest.raises(ValueError, match="schedule_name"):
        sch.make_schedule(steps=4, min_noise_level=0.2, schedule_name="ldm")
    with pytest.raises(ValueError, match="eta"):
        sch.Schedule.from_sqrt_etas([0.5, 1.5], kappa=1.0)
    with pytest.raises(ValueError, match="unknown diffusion parameters"):
        sch.schedule_from_config({"steps": 4, "min_noise_level": 0.2, "normalize_input": True,
                                  "schedule_name": "exponential", "schedule_kwargs": {"power": 0.3},
                                  "bogus": 1})
