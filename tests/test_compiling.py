"""ircore.compiling: the samplers' tuned XLA:CPU options, per compile and per process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ircore import compiling, layers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sampling_options_only_on_cpu_and_never_over_the_users_flag(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert compiling.sampling_options("cpu") == compiling.CPU_SAMPLING_OPTIONS
    assert compiling.sampling_options("gpu") is None and compiling.sampling_options("tpu") is None
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
    assert compiling.sampling_options("cpu") is None


def test_tune_cpu_xla_flags_appends_once_and_keeps_the_users_choice():
    # Once JAX's backends run, the process-level switch must refuse (too late to act).
    jax.devices()
    env = {"XLA_FLAGS": ""}
    assert not compiling.tune_cpu_xla_flags(env) and env == {"XLA_FLAGS": ""}
    code = ("import os, json; from ircore import compiling; env = {'XLA_FLAGS': '--xla_dump_to=/nonexistent'}; "
            "first = compiling.tune_cpu_xla_flags(env); second = compiling.tune_cpu_xla_flags(env); "
            "mine = {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=dot'}; third = compiling.tune_cpu_xla_flags(mine); "
            "print(json.dumps([first, second, third, env['XLA_FLAGS'], mine['XLA_FLAGS']]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second, third, flags, mine = json.loads(out.stdout.strip().splitlines()[-1])
    assert (first, second, third) == (True, False, False)
    assert flags == "--xla_dump_to=/nonexistent --xla_cpu_experimental_ynn_fusion_type=individual_dot"
    assert mine == "--xla_cpu_experimental_ynn_fusion_type=dot"


def test_the_process_flag_is_one_xla_accepts_and_keeps_outputs():
    # A CLI process with the flag set starts JAX and gives the same GroupNorm + conv + attention numbers.
    code = ("import os; from ircore import compiling; assert compiling.tune_cpu_xla_flags(); "
            "import jax, jax.numpy as jnp, numpy as np; from ircore import layers; "
            "x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 64)); "
            "y = jax.jit(lambda x: layers.group_norm(x, 32, jnp.ones(64), jnp.zeros(64), 1e-6))(x); "
            "print(float(jnp.abs(y).sum()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "XLA_FLAGS": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 64))
    here = float(jnp.abs(jax.jit(lambda x: layers.group_norm(x, 32, jnp.ones(64), jnp.zeros(64), 1e-6))(x)).sum())
    assert float(out.stdout.strip().splitlines()[-1]) == pytest.approx(here, rel=1e-5)


def test_tuned_compile_changes_a_network_by_rounding_only():
    # A conv / GroupNorm / attention block compiled with the samplers' options against XLA's own.
    block = layers.ResBlock(out_channels=64)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 32))
    emb = jax.random.normal(jax.random.PRNGKey(2), (2, 16))
    params = block.init(jax.random.PRNGKey(3), x, emb)
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(4), p.shape), params)
    attn = layers.AttentionBlock(num_heads=1)
    attn_params = attn.init(jax.random.PRNGKey(5), jnp.zeros((2, 16, 16, 64)))

    def fn(p, ap, x, emb):
        return attn.apply(ap, block.apply(p, x, emb))

    lowered = jax.jit(fn).lower(params, attn_params, x, emb)
    tuned = lowered.compile(compiler_options=compiling.sampling_options("cpu"))(params, attn_params, x, emb)
    default = lowered.compile()(params, attn_params, x, emb)
    np.testing.assert_allclose(np.asarray(tuned), np.asarray(default), atol=1e-5, rtol=1e-5)
