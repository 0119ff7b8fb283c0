"""DeqIR schedule and timestep sequences against ``deqir/schedule`` (official values)."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqir_jax import schedule


def _float_atol(meta: dict) -> float:
    match = re.search(r"atol\s*([0-9.]+(?:e-?[0-9]+)?)", meta["tolerance"])
    assert match, f"no float atol in tolerance string {meta['tolerance']!r}"
    return float(match.group(1))


def _step_counts(fx) -> list[int]:
    counts = sorted(int(m.group(1)) for k in fx.files if (m := re.fullmatch(r"T(\d+)/t", k)))
    assert counts, "schedule fixture holds no T*/t sequences"
    return counts


@pytest.fixture(scope="module")
def fx(load_fixture):
    return load_fixture("deqir/schedule")


def test_betas_and_abar(fx):
    atol = _float_atol(fx.meta)
    betas = schedule.linear_betas()
    assert betas.dtype == np.float32 and betas.shape == fx["betas"].shape
    np.testing.assert_allclose(betas, fx["betas"], rtol=0, atol=atol)
    abar = schedule.abar_padded(betas)
    assert abar.shape == fx["abar_padded"].shape and abar[0] == 1.0
    np.testing.assert_allclose(abar, fx["abar_padded"], rtol=0, atol=atol)
    # The float64-accumulated cumprod is bit-identical to the official one.
    assert np.max(np.abs(abar - fx["abar_padded"])) == 0.0
    np.testing.assert_allclose(schedule.alphas_cumprod(betas), fx["abar_padded"][1:], rtol=0, atol=atol)


def test_timestep_sequences_and_alphas(fx):
    atol = _float_atol(fx.meta)
    abar = jnp.asarray(schedule.abar_padded(schedule.linear_betas()))
    gather = jax.jit(schedule.compute_alpha)
    for steps in _step_counts(fx):
        t, next_t = schedule.timestep_sequence(steps)
        np.testing.assert_array_equal(t, fx[f"T{steps}/t"])
        np.testing.assert_array_equal(next_t, fx[f"T{steps}/next_t"])
        assert next_t[-1] == -1 and np.all(np.diff(t) < 0), "states must be ordered noisiest first"
        np.testing.assert_allclose(np.asarray(gather(abar, jnp.asarray(t))), fx[f"T{steps}/at"], rtol=0, atol=atol)
        np.testing.assert_allclose(
            np.asarray(gather(abar, jnp.asarray(next_t))), fx[f"T{steps}/at_next"], rtol=0, atol=atol
        )


def test_inversion_sequence_lengths(fx):
    for steps_str, info in fx.meta["sequences"].items():
        steps = int(steps_str)
        t_sr, _ = schedule.timestep_sequence(steps)
        t_inv, next_inv = schedule.timestep_sequence(steps, drop_remainder=False)
        assert len(t_sr) == info["len_sr_seq"]
        assert len(t_inv) == info["len_uniform_seq(ls_sr_opt)"]
        assert next_inv[-1] == -1
        if info["same"]:  # both rules give the same ascending sequence on their common prefix
            np.testing.assert_array_equal(t_sr[::-1], t_inv[::-1][: len(t_sr)])


def test_drop_rule_keeps_official_remainder_behaviour():
    # 1000 // 300 = 3 -> range has 334 entries, the rule drops only one (as the official code).
    t, _ = schedule.timestep_sequence(300)
    assert len(t) == 333 and t[0] == 996
    t, next_t = schedule.timestep_sequence(15, drop_remainder=False)
    assert len(t) == 16 and t[0] == 990 and next_t[0] == 924


def test_compute_alpha_endpoints():
    abar = jnp.asarray(schedule.abar_padded(schedule.linear_betas()))
    out = schedule.compute_alpha(abar, jnp.array([-1, 0, 999]))
    assert float(out[0]) == 1.0
    np.testing.assert_allclose(float(out[1]), 1 - 1e-4, rtol=1e-6)
    assert 0.0 < float(out[2]) < 1e-4


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: schedule.timestep_sequence(0), "num_steps"),
        (lambda: schedule.timestep_sequence(2000), "num_steps"),
        (lambda: schedule.timestep_sequence(10, skip_type="cosine"), "skip_type"),
        (lambda: schedule.linear_betas(0.5, 0.1), "start"),
        (lambda: schedule.compute_alpha(jnp.ones(11), jnp.array([0.5])), "integers"),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
