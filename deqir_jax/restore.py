"""One-call DeqIR restoration: schedule + coefficients + solve, for the CLI, benchmarks and research code.

    out = restore_measurement(eps_fn, op, y, x_T, z, ChainSettings(timesteps=25, etw=0.1))
    out.x0            # (1, H, W, C) restored image in [-1, 1] (not clamped)
    ChainSettings(solver=OFFICIAL_ANDERSON)   # the official solver (deqir_jax.solver_settings)

``sampler="parallel"`` solves the joint fixed point over all T states (one batched eps call per map
evaluation, the time axis sharded over ``sharding``); ``"sequential"`` runs the T-step DDIM + DDNM chain.
Both are pure functions of arrays; :func:`make_restore_fn` jit-compiles one for fixed settings.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from deqir_jax import anderson, fixed_point, init_opt, schedule, sequential
from deqir_jax.solver_settings import DEFAULT as DEFAULT_SOLVER, OFFICIAL_ANDERSON, SolverSettings  # noqa: F401

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]

SAMPLERS = ("parallel", "sequential")


@dataclasses.dataclass(frozen=True)
class ChainSettings:
    """Static settings of the T-step chain and of its solve (hashable: one compile per distinct value).

    The chain is the official one (README example ``--timesteps 25 --etw 0.1``, nw 0); ``solver`` is the
    parallel solve (:class:`~deqir_jax.solver_settings.SolverSettings`, the project default unless given).
    """

    timesteps: int = 25
    nw: float = 0.0
    etw: float = 0.1
    sampler: str = "parallel"
    solver: SolverSettings = DEFAULT_SOLVER
    use_svd: bool = True

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {self.timesteps}")
        if not isinstance(self.solver, SolverSettings):
            raise ValueError(f"solver must be a SolverSettings, got {type(self.solver).__name__}")


class RestoreOutput(NamedTuple):
    """x0: (1, H, W, C) result; states: (T, H, W, C) every state of the chain (last row = x0);
    n_evals: () sequential rounds of network calls (parallel: map evaluations plus warm-start calls;
    sequential: T single-image steps); residuals: relative residual per round, NaN padded (sequential: all
    NaN); abs_residuals: the same, absolute; status: () solver status code
    (:data:`deqir_jax.anderson.STATUS_NAMES`; sequential: converged); image_evals: () single-image network
    evaluations in all (the compute)."""

    x0: Array
    states: Array
    n_evals: Array
    residuals: Array
    abs_residuals: Array
    status: Array
    image_evals: Array


def chain_schedule(timesteps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, abar(t), abar(next_t)) of the official T-step chain, noisiest first (numpy constants)."""
    abar_pad = schedule.abar_padded(schedule.linear_betas())
    t, t_next = schedule.timestep_sequence(timesteps)
    return t.astype(np.int32), abar_pad[t + 1], abar_pad[t_next + 1]


def restore_measurement(
    eps_fn: EpsFn,
    op: Any,
    y: Array,
    x_T: Array,
    z: Array,
    settings: ChainSettings,
    *,
    sharding: NamedSharding | None = None,
    init_states: Array | None = None,
) -> RestoreOutput:
    """Restores one image from its measurement.

    eps_fn(x (N,H,W,C), t (N,) int32) -> (N,H,W,C'>=C); op: operator (deqir_jax.operators);
    y: measurement in the operator layout with batch 1; x_T, z: (1, H, W, C) initial noise and the fixed
    noise image; sharding: optional time-axis sharding (ircore.mesh.time_sharding) of the states;
    init_states: optional warm start (T, H, W, C) (default: x_T repeated, as the official code).
    """
    if x_T.ndim != 4 or x_T.shape[0] != 1:
        raise ValueError(f"x_T must be one NHWC image (1, H, W, C), got {tuple(x_T.shape)}")
    t, at, at_next = chain_schedule(settings.timesteps)
    T = len(t)
    if settings.sampler == "sequential":
        seq = sequential.sequential_sample(
            eps_fn, op, x_T, y, z, t, at, at_next, nw=settings.nw, etw=settings.etw
        )
        states = seq.states[:, 0]
        no_history = jnp.full((settings.solver.rounds(T),), jnp.nan, states.dtype)
        return RestoreOutput(
            x0=seq.x0, states=states, n_evals=jnp.int32(T), residuals=no_history, abs_residuals=no_history,
            status=jnp.int32(anderson.CONVERGED), image_evals=jnp.int32(T),
        )
    coefs = fixed_point.make_coefficients(
        op, x_T, y, z, t, at, at_next, nw=settings.nw, etw=settings.etw, use_svd=settings.use_svd
    )

    res = fixed_point.solve_parallel(eps_fn, op, coefs, settings.solver, x_init=init_states, sharding=sharding)
    return RestoreOutput(
        x0=res.solution[-1:], states=res.solution, n_evals=res.n_evals, residuals=res.residuals,
        abs_residuals=res.abs_residuals, status=res.status, image_evals=res.image_evals,
    )


def make_restore_fn(
    model: Any, settings: ChainSettings, *, sharding: NamedSharding | None = None
) -> Callable[[Any, Any, Array, Array, Array], RestoreOutput]:
    """``fn(params, op, y, x_T, z) -> RestoreOutput``, jit-compiled once per shape for ``model``."""

    @jax.jit
    def fn(params, op, y, x_T, z):
        eps_fn = fixed_point.eps_fn_from_model(model, params)
        return restore_measurement(eps_fn, op, y, x_T, z, settings, sharding=sharding)

    return fn


def make_init_opt_fn(
    model: Any, settings: ChainSettings, opt: init_opt.InitOptConfig, loss: str,
    *, sharding: NamedSharding | None = None,
) -> Callable[..., init_opt.InitOptResult]:
    """``fn(params, op, y, x_T, z, target) -> InitOptResult``: optimises x_T for the chain of ``settings``
    (loss ``"measurement"`` ignores ``target``; ``"reference"`` / ``"oracle"`` compare x0 with it)."""
    t, at, at_next = chain_schedule(settings.timesteps)

    @jax.jit
    def fn(params, op, y, x_T, z, target):
        eps_fn = fixed_point.eps_fn_from_model(model, params)
        problem = init_opt.Problem(y=y, z=z, t=jnp.asarray(t), at=jnp.asarray(at), at_next=jnp.asarray(at_next))
        loss_fn = init_opt.make_loss(loss, op=op, y=y, target=target)
        return init_opt.optimize_init(
            eps_fn, op, x_T, problem, loss_fn, opt, nw=settings.nw, etw=settings.etw,
            use_svd=settings.use_svd, sharding=sharding,
        )

    return fn
