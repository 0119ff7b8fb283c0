"""DeqIR fixed-point map: closed form vs the sequential chain, chunking, sharding (1 vs 8 devices), mesh helpers.

Synthetic tests use a random dense linear operator and the analytic eps of a Gaussian prior; the sharding
test uses the tiny UNet and the first sampling case of the fixture folder (tolerance from its sidecar).
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqir_fixture_utils import SAMPLING_CASES, load_sampling_case, load_tiny_unet, maxabs, parse_tol
from deqir_jax import anderson, fixed_point as fp, schedule, sequential
from deqir_jax.solver_settings import OFFICIAL_ANDERSON, SolverSettings
from ircore import mesh as mesh_lib

H = W = 4
C = 3
PRIOR_VAR = 0.25


class DenseOperator:
    """Random rank-deficient linear operator on flattened NHWC images (test only)."""

    def __init__(self, seed: int, m: int, dtype=np.float32):
        rng = np.random.default_rng(seed)
        n = H * W * C
        a = rng.normal(size=(m, n)) @ np.diag(rng.uniform(0.5, 1.5, n))
        self.a = jnp.asarray(a, dtype)
        self.a_pinv = jnp.asarray(np.linalg.pinv(a), dtype)

    def A(self, x):
        return jnp.einsum("mn,bn->bm", self.a, x.reshape(x.shape[0], -1), precision="highest")

    def A_pinv(self, y):
        return jnp.einsum("nm,bm->bn", self.a_pinv, y, precision="highest").reshape(y.shape[0], H, W, C)

    def project(self, x):
        return self.A_pinv(self.A(x))


def gaussian_eps(abar_pad):
    """Optimal eps for data ~ N(0, PRIOR_VAR I)."""
    def eps(x, t):
        ab = jnp.asarray(abar_pad, x.dtype)[t + 1][:, None, None, None]
        return jnp.sqrt(1 - ab) * x / (PRIOR_VAR * ab + 1 - ab)
    return eps


def _problem(T: int = 5, dtype=jnp.float32, seed: int = 0):
    abar = schedule.abar_padded(schedule.linear_betas())
    t, next_t = schedule.timestep_sequence(T)
    op = DenseOperator(seed, 20, np.float64 if dtype == jnp.float64 else np.float32)
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    x_T = jax.random.normal(keys[0], (1, H, W, C), dtype)
    z = jax.random.normal(keys[1], (1, H, W, C), dtype)
    y = op.A(0.5 * jax.random.normal(keys[2], (1, H, W, C), dtype))
    at = jnp.asarray(abar[t + 1], dtype)
    at_next = jnp.asarray(abar[next_t + 1], dtype)
    return dict(op=op, x_T=x_T, y=y, z=z, t=jnp.asarray(t, jnp.int32), at=at, at_next=at_next,
                eps=gaussian_eps(abar))


@pytest.mark.parametrize("nw,etw", [(0.0, 0.0), (0.3, 0.3), (0.0, 0.1)])
def test_sequential_trajectory_is_the_fixed_point(nw, etw):
    p = _problem()
    coefs = fp.make_coefficients(p["op"], p["x_T"], p["y"], p["z"], p["t"], p["at"], p["at_next"], nw=nw, etw=etw)
    seq = sequential.sequential_sample(p["eps"], p["op"], p["x_T"], p["y"], p["z"], p["t"], p["at"],
                                       p["at_next"], nw=nw, etw=etw)
    states = seq.states[:, 0]
    f = jax.jit(lambda X: fp.deq_map(p["eps"], p["op"], coefs, X))
    scale = float(jnp.max(jnp.abs(states)))
    assert maxabs(f(states), states) < 1e-5 * max(1.0, scale) * float(jnp.sqrt(1 / p["at"][0]))
    picard = anderson.picard_solve(f, fp.initial_states(p["x_T"], len(p["t"])), max_iter=len(p["t"]))
    assert maxabs(picard.solution, states) < 1e-4


def test_float64_fixed_point_is_exact():
    with jax.enable_x64(True):
        p = _problem(dtype=jnp.float64)
        coefs = fp.make_coefficients(p["op"], p["x_T"], p["y"], p["z"], p["t"], p["at"], p["at_next"],
                                     nw=0.2, etw=0.4)
        assert coefs.all_xT.dtype == jnp.float64
        seq = sequential.sequential_sample(p["eps"], p["op"], p["x_T"], p["y"], p["z"], p["t"], p["at"],
                                           p["at_next"], nw=0.2, etw=0.4)
        F = fp.deq_map(p["eps"], p["op"], coefs, seq.states[:, 0])
        assert F.dtype == jnp.float64
        assert maxabs(F, seq.states[:, 0]) < 1e-10


def test_coefficients_closed_form():
    p = _problem(dtype=jnp.float32)
    a, b = np.asarray(p["at"], np.float64), np.asarray(p["at_next"], np.float64)
    nw, etw = 0.3, 0.2
    sigma = np.sqrt(1 - b**2)
    delta = np.sqrt((1 - a) / a)
    gamma = np.sqrt(1 - b) * np.sqrt(1 - etw**2) / np.sqrt(b)
    nu = np.sqrt(1 - b) * nw / np.sqrt(b)
    for use_svd, inversion, g_fac, n_fac in [(True, False, 1, 1), (False, False, sigma, sigma),
                                             (True, True, 1, sigma)]:
        c = fp.make_coefficients(p["op"], p["x_T"], p["y"], p["z"], p["t"], p["at"], p["at_next"],
                                 nw=nw, etw=etw, use_svd=use_svd, inversion=inversion)
        np.testing.assert_allclose(np.asarray(c.et_coeff1), delta, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(c.et_coeff2), gamma * g_fac, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(np.asarray(c.noise_coeff), nu * n_fac, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(np.asarray(c.prevsum), np.sqrt(b), rtol=1e-6)
    op, x_T, z = p["op"], p["x_T"], p["z"]
    null_xT = x_T - op.project(x_T)
    np.testing.assert_allclose(np.asarray(c.all_xT), np.sqrt(b / a[0])[:, None, None, None] * np.asarray(null_xT),
                               rtol=1e-5, atol=1e-5)
    pz = np.asarray(op.project(z))
    nu_inv = (nu * sigma)[:, None, None, None]
    expected_noise = nu_inv * pz + np.cumsum(nu_inv * (np.asarray(z) - pz), axis=0)
    np.testing.assert_allclose(np.asarray(c.noise), expected_noise, rtol=1e-5, atol=1e-6)


def test_inversion_map_rows():
    p = _problem()
    T = len(p["t"])
    coefs = fp.make_coefficients(p["op"], p["x_T"], p["y"], p["z"], p["t"], p["at"], p["at_next"], inversion=True)
    X = jax.random.normal(jax.random.PRNGKey(3), (T, H, W, C))
    Xi = jnp.concatenate([p["x_T"], X], axis=0)
    out = fp.deq_inversion_map(p["eps"], p["op"], coefs, Xi)
    assert out.shape == (T + 1, H, W, C)
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(p["x_T"][0]))
    np.testing.assert_allclose(np.asarray(out[1:]), np.asarray(fp.deq_map(p["eps"], p["op"], coefs, X)), atol=1e-6)


def test_chunked_model_calls_give_the_same_map():
    p = _problem(T=10)
    coefs = fp.make_coefficients(p["op"], p["x_T"], p["y"], p["z"], p["t"], p["at"], p["at_next"], nw=0.1)
    X = jax.random.normal(jax.random.PRNGKey(4), (10, H, W, C))
    calls = []

    def eps(x, t):
        calls.append(x.shape[0])
        return p["eps"](x, t)

    full = fp.deq_map(eps, p["op"], coefs, X)
    for chunk in (1, 3, 4, 10, 64):
        calls.clear()
        out = jax.jit(lambda X: fp.deq_map(eps, p["op"], coefs, X, chunk_size=chunk))(X)
        np.testing.assert_allclose(np.asarray(out), np.asarray(full), rtol=1e-5, atol=1e-5)
        assert calls == [min(chunk, 10)]  # one traced call of the bounded batch size


def test_solve_parallel_entry_point():
    p = _problem(T=5)
    coefs = fp.make_coefficients(p["op"], p["x_T"], p["y"], p["z"], p["t"], p["at"], p["at_next"], etw=0.1)
    seq = sequential.sequential_sample(p["eps"], p["op"], p["x_T"], p["y"], p["z"], p["t"], p["at"],
                                       p["at_next"], etw=0.1)
    exact = SolverSettings(method="picard", tol=0.0, max_iter=5, stop="residual", row_tol=0.0)
    picard = fp.solve_parallel(p["eps"], p["op"], coefs, exact)
    assert maxabs(picard.solution, seq.states[:, 0]) < 1e-4
    assert int(picard.n_evals) == 5 and int(picard.image_evals) == 25
    tight = dataclasses.replace(OFFICIAL_ANDERSON, tol=1e-6, max_iter=30, lam=1e-8)
    res = fp.solve_parallel(p["eps"], p["op"], coefs, tight)
    assert int(res.status) in (anderson.CONVERGED, anderson.MAX_ITER)
    assert maxabs(res.solution[-1:], seq.x0) < 1e-3
    default = fp.solve_parallel(p["eps"], p["op"], coefs)
    assert int(default.status) == anderson.CONVERGED and maxabs(default.solution[-1:], seq.x0) < 1e-2
    with pytest.raises(ValueError, match="method must be one of"):
        SolverSettings(method="broyden")
    with pytest.raises(TypeError, match="SolverSettings"):
        fp.solve_parallel(p["eps"], p["op"], coefs, "anderson")


def test_bad_inputs_raise():
    p = _problem()
    coefs = fp.make_coefficients(p["op"], p["x_T"], p["y"], p["z"], p["t"], p["at"], p["at_next"])
    with pytest.raises(ValueError, match="states must have shape"):
        fp.deq_map(p["eps"], p["op"], coefs, jnp.zeros((3, H, W, C)))
    with pytest.raises(ValueError, match=r"x_T must be one NHWC image of shape \(1, H, W, C\)"):
        fp.make_coefficients(p["op"], jnp.zeros((2, H, W, C)), p["y"], p["z"], p["t"], p["at"], p["at_next"])
    with pytest.raises(ValueError, match="equal length"):
        fp.make_coefficients(p["op"], p["x_T"], p["y"], p["z"], p["t"], p["at"][:-1], p["at_next"])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        fp.batched_eps(p["eps"], jnp.zeros((2, H, W, C)), jnp.zeros((2,), jnp.int32), chunk_size=0)
    with pytest.raises(ValueError, match="z must have the shape of x_T"):
        sequential.sequential_sample(p["eps"], p["op"], p["x_T"], p["y"], jnp.zeros((1, 2, 2, 3)), p["t"],
                                     p["at"], p["at_next"])


# ---------------------------------------------------------------------------------------- sharding


@pytest.fixture(scope="module")
def sr2_case(load_fixture):
    return load_sampling_case(load_fixture, SAMPLING_CASES[0], load_tiny_unet(load_fixture))


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _sharded_solves(eps_apply, sharding, chunk_size, settings, params, op, coefs, x0):
    f = lambda X: fp.deq_map(lambda x, t: eps_apply(params, x, t), op, coefs, X, chunk_size=chunk_size,
                             sharding=sharding)
    T = x0.shape[0]
    picard = anderson.picard_solve(f, x0, max_iter=T, state_sharding=sharding)
    official = anderson.anderson_solve(f, x0, state_sharding=sharding, **dict(settings))
    return picard, official


def _conv_eps(seed: int):
    """A small conv "model" (per-row, timestep-modulated) to exercise batching without compile cost."""
    k = 0.2 * jax.random.normal(jax.random.PRNGKey(seed), (3, 3, C, C))

    def eps(x, t):
        h = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(h) * (1.0 + t[:, None, None, None] / 1000.0)

    return eps


def test_sharded_map_matches_single_device_and_splits_the_batch():
    p = _problem(T=10)
    eps = _conv_eps(1)
    coefs = fp.make_coefficients(p["op"], p["x_T"], p["y"], p["z"], p["t"], p["at"], p["at_next"], nw=0.1)
    x0 = fp.initial_states(p["x_T"], 10)
    out = {}
    for n_dev, chunk in [(1, None), (8, None), (8, 8), (8, 3)]:
        sharding = mesh_lib.time_sharding(mesh_lib.make_mesh("time", devices=jax.devices()[:n_dev]))

        def solve(x0, sharding=sharding, chunk=chunk):
            f = lambda X: fp.deq_map(eps, p["op"], coefs, X, chunk_size=chunk, sharding=sharding)
            return anderson.anderson_solve(f, x0, max_iter=12, tol=1e-6, state_sharding=sharding)

        jitted = jax.jit(solve)
        out[(n_dev, chunk)] = jitted(x0)
        hlo = jitted.lower(x0).compile().as_text()
        conv_batches = {int(line.split("f32[")[1].split(",")[0]) for line in hlo.splitlines()
                        if "convolution(" in line and "f32[" in line}
        per_call = 10 if chunk is None else min(chunk, 10)  # rows per model call, before padding
        per_device = mesh_lib.padded_length(per_call, n_dev) // n_dev
        assert conv_batches == {per_device}, f"{n_dev} devices, chunk {chunk}: conv batches {conv_batches}"
    ref = out[(1, None)]
    for key, res in out.items():
        assert int(res.n_evals) == int(ref.n_evals), key
        assert maxabs(res.solution, ref.solution) < 1e-6 * float(jnp.max(jnp.abs(ref.solution))), key
    assert len(out[(8, None)].solution.sharding.device_set) == 8


@pytest.mark.slow
def test_one_device_and_eight_devices_give_the_same_fixed_point(sr2_case):
    c = sr2_case
    assert jax.device_count() == 8, "conftest should provide 8 CPU devices"
    atol = parse_tol(c.meta["tolerance"]["converged fixed point vs seq/states"])
    s = c.meta["anderson_settings"]
    settings = tuple(sorted(dict(m=s["m"], lam=s["lam"], beta=s["beta"], tol=s["tol"], max_iter=s["max_iter"]).items()))
    coefs = fp.make_coefficients(c.op, c.x_T, c.y, c.z, c.t, c.at, c.at_next, nw=c.nw, etw=c.etw)
    x0 = fp.initial_states(c.x_T, c.T)
    results = {}
    for n_dev, chunk in [(1, None), (8, None), (8, 8)]:
        mesh = mesh_lib.make_mesh("time", devices=jax.devices()[:n_dev])
        sharding = mesh_lib.time_sharding(mesh)
        results[(n_dev, chunk)] = _sharded_solves(c.eps_apply, sharding, chunk, settings, c.params, c.op, coefs, x0)
    ref_picard, ref_and = results[(1, None)]
    seq = np.moveaxis(c.fx["seq/states"], 1, -1)
    for key, (picard, official) in results.items():
        err_p = maxabs(picard.solution, ref_picard.solution)
        err_a = maxabs(official.solution, ref_and.solution)
        print(f"devices/chunk {key}: Picard diff {err_p:.2e}, Anderson diff {err_a:.2e}, "
              f"evals {int(official.n_evals)} (atol {atol:.0e})")
        assert err_p < atol and err_a < atol
        assert int(official.n_evals) == int(ref_and.n_evals)
        assert maxabs(picard.solution, seq) < atol
    picard8, _ = results[(8, None)]
    assert len(picard8.solution.sharding.device_set) == 8


# ------------------------------------------------------------------------------------------- mesh


def test_mesh_helpers():
    mesh = mesh_lib.make_mesh()
    assert mesh.axis_names == ("time",) and mesh.devices.shape == (jax.device_count(),)
    two = mesh_lib.make_mesh(("data", "time"), shape=(2, -1))
    assert two.devices.shape == (2, jax.device_count() // 2)
    assert mesh_lib.num_shards(mesh_lib.time_sharding(two, "time")) == jax.device_count() // 2
    assert mesh_lib.num_shards(mesh_lib.replicated(two)) == 1
    assert mesh_lib.num_shards(None) == 1
    x = jnp.arange(10.0).reshape(10, 1)
    padded = mesh_lib.pad_to_multiple(x, 8)
    assert padded.shape == (16, 1) and float(padded[10:].sum()) == 0.0
    np.testing.assert_array_equal(np.asarray(mesh_lib.unpad(padded, 10)), np.asarray(x))
    assert mesh_lib.pad_to_multiple(x, 5) is x
    with pytest.raises(ValueError, match="needs 6 devices"):
        mesh_lib.make_mesh(("a",), shape=(6,), devices=jax.devices()[:4])
    with pytest.raises(ValueError, match="2 entries but 1 axis names"):
        mesh_lib.make_mesh(("a",), shape=(2, 2))
    with pytest.raises(ValueError, match="not in mesh axes"):
        mesh_lib.time_sharding(mesh, "batch")


def test_initialize_distributed_is_a_no_op_for_one_process(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
                "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert mesh_lib.initialize_distributed() is False
