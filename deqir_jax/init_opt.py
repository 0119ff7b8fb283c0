"""Optimising the initial noise x_T through the fixed point ("DEQ inversion", spec section 7).

Each epoch solves the fixed point from the current x_T, evaluates a loss on its x_0 row and takes an
optax step on x_T. Two gradient modes:

* ``"phantom"`` (official): the (T+1)-row inversion map (row 0 = x_T), solved with the official inversion
  settings (:data:`~deqir_jax.solver_settings.OFFICIAL_INVERSION`: Anderson m 3, lam 1e-3, max_iter 15,
  tol 1e-2, beta 0.9; ``solver.method`` anderson or picard), warm-started from
  ``concat([x_T], warm_states)``; then ``X_out = (1 - tau) X* + tau f(X*)`` with X* detached. The
  gradient reaches x_T only through the linear ``all_xT`` term.
* ``"implicit"`` (the default): the T-row sampling map through :func:`deqir_jax.implicit.implicit_solve`
  (adjoint fixed point), i.e. the exact gradient of the converged x_0 (model Jacobian included). Any
  ``solver`` works: Anderson solves forward and adjoint alike; the chain solves (picard, triangular) solve
  forward with :func:`deqir_jax.fixed_point.solve_parallel` and the (upper-triangular) adjoint exactly with
  T Picard steps.

Losses (weighted by ``lambda1``): ``"oracle"`` ||x0 - x_gt||^2 (official default; uses the ground
truth), ``"reference"`` ||x0 - x_ref||^2, ``"measurement"`` ||A x0 - y||^2; sums over pixels.
:func:`optimize_init` runs all epochs in one ``lax.while_loop`` with early stopping and keeps the x_T
with the lowest loss (the x_T that produced it; the official code stores the iterate after the step).
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from deqir_jax import fixed_point as fp
from deqir_jax.anderson import SolverResult, anderson_solve, picard_solve
from deqir_jax.implicit import implicit_solve, phantom_solve
from deqir_jax.solver_settings import OFFICIAL_INVERSION, SolverSettings

Array = jax.Array
LossFn = Callable[[Array], Array]

LOSS_KINDS = ("oracle", "reference", "measurement")
GRADIENT_MODES = ("phantom", "implicit")


@dataclasses.dataclass(frozen=True)
class InitOptConfig:
    """Settings (official defaults: configs/imagenet.yml optim + latent_space_opt_anderson.py, except the
    gradient: implicit by default, phantom is the official one). ``solver`` is the inner fixed-point solve."""

    gradient: str = "implicit"
    lr: float = 2e-5
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    n_epochs: int = 2000
    early_stop: float = 0.1  # stop once the loss falls below this (official lpips_eps)
    lambda1: float = 1.0
    tau: float = 0.1
    pg_steps: int = 1
    solver: SolverSettings = OFFICIAL_INVERSION

    def __post_init__(self):
        if self.gradient not in GRADIENT_MODES:
            raise ValueError(f"gradient must be one of {GRADIENT_MODES}, got {self.gradient!r}")
        if self.n_epochs < 1:
            raise ValueError(f"n_epochs must be >= 1, got {self.n_epochs}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if not isinstance(self.solver, SolverSettings):
            raise ValueError(f"solver must be a SolverSettings, got {type(self.solver).__name__}")
        if self.gradient == "phantom" and self.solver.method == "triangular":
            raise ValueError("the phantom gradient solves the (T+1)-row inversion map: use solver.method "
                             "anderson or picard (or gradient=implicit)")

    def generic_solver(self, rows: int, sharding=None) -> Callable[..., SolverResult]:
        """The inner solve of a ``rows``-row map as a generic ``solve(f, x0)`` (Anderson, or whole-state Picard;
        ``max_iter`` 0 = rows + 1 evaluations)."""
        s = self.solver
        if s.method == "anderson":
            return partial(anderson_solve, m=s.m, lam=s.lam, beta=s.beta, tol=s.tol, max_iter=s.max_iter,
                           state_sharding=sharding)
        return partial(picard_solve, tol=s.tol, max_iter=s.rounds(rows), state_sharding=sharding)

    def optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.lr, b1=self.b1, b2=self.b2, eps=self.eps)


class Problem(NamedTuple):
    """The fixed inputs of an inversion (a pytree): measurement y in the operator layout (batch 1),
    noise z (1, H, W, C), timesteps t and abar values at, at_next (T,)."""

    y: Array
    z: Array
    t: Array
    at: Array
    at_next: Array


class StepOutput(NamedTuple):
    """loss: () weighted loss; grad: (1, H, W, C) d loss / d x_T; states: solver output rows used for the
    loss ((T+1) rows for phantom, T rows for implicit); solve: the forward SolverResult."""

    loss: Array
    grad: Array
    states: Array
    solve: SolverResult


class InitOptResult(NamedTuple):
    """best_x_T: (1, H, W, C) x_T with the lowest loss; best_loss: (); losses: (n_epochs,) NaN after the
    last epoch run; n_epochs: () epochs run; x_T: (1, H, W, C) final iterate; solver_evals: (n_epochs,)
    map evaluations of each forward solve (-1 after the last)."""

    best_x_T: Array
    best_loss: Array
    losses: Array
    n_epochs: Array
    x_T: Array
    solver_evals: Array


def make_loss(kind: str, *, op: Any = None, y: Array | None = None, target: Array | None = None) -> LossFn:
    """Loss on x0 (1, H, W, C): ``oracle``/``reference`` need ``target`` (1, H, W, C); ``measurement``
    needs ``op`` and ``y``. All are sums of squares (the official reduction)."""
    if kind in ("oracle", "reference"):
        if target is None:
            raise ValueError(f"loss {kind!r} needs target=(1, H, W, C) image")
        return lambda x0: jnp.sum(jnp.square(x0 - target))
    if kind == "measurement":
        if op is None or y is None:
            raise ValueError("loss 'measurement' needs op and y")
        return lambda x0: jnp.sum(jnp.square(op.A(x0) - y))
    raise ValueError(f"unknown loss kind {kind!r}; expected one of {LOSS_KINDS}")


def _phantom_loss(x_T, warm_states, eps_fn, op, problem, loss_fn, cfg, nw, etw, use_svd, sharding):
    coefs = fp.make_coefficients(op, x_T, problem.y, problem.z, problem.t, problem.at, problem.at_next,
                                 nw=nw, etw=etw, use_svd=use_svd, inversion=True)
    chunk = cfg.solver.chunk_size or None
    f = lambda X, c: fp.deq_inversion_map(eps_fn, op, c, X, chunk_size=chunk, sharding=sharding)
    x0_guess = jnp.concatenate([x_T, warm_states], axis=0)
    states, result = phantom_solve(f, coefs, x0_guess, cfg.generic_solver(x0_guess.shape[0], sharding), tau=cfg.tau,
                                   steps=cfg.pg_steps)
    loss = cfg.lambda1 * loss_fn(states[-1:])
    return loss, (states, result)


def _implicit_loss(x_T, warm_states, eps_fn, op, problem, loss_fn, cfg, nw, etw, use_svd, sharding):
    coefs = fp.make_coefficients(op, x_T, problem.y, problem.z, problem.t, problem.at, problem.at_next,
                                 nw=nw, etw=etw, use_svd=use_svd)
    chunk = cfg.solver.chunk_size or None
    f = lambda X, c: fp.deq_map(eps_fn, op, c, X, chunk_size=chunk, sharding=sharding)
    warm = jax.lax.stop_gradient(warm_states)
    if cfg.solver.method == "anderson":
        result = implicit_solve(f, coefs, warm, cfg.generic_solver(warm.shape[0], sharding))
    else:
        forward = lambda x0, c: fp.solve_parallel(eps_fn, op, c, cfg.solver, x_init=x0, sharding=sharding)
        adjoint = partial(picard_solve, tol=0.0, max_iter=int(problem.t.shape[0]), state_sharding=sharding)
        result = implicit_solve(f, coefs, warm, solve_adjoint=adjoint, forward=forward)
    loss = cfg.lambda1 * loss_fn(result.solution[-1:])
    return loss, (result.solution, jax.tree.map(jax.lax.stop_gradient, result))


def loss_and_grad(
    eps_fn: fp.EpsFn,
    op: Any,
    x_T: Array,
    warm_states: Array,
    problem: Problem,
    loss_fn: LossFn,
    cfg: InitOptConfig = InitOptConfig(),
    *,
    nw: float = 0.0,
    etw: float = 0.0,
    use_svd: bool = True,
    sharding=None,
) -> StepOutput:
    """One epoch's forward solve, loss and gradient w.r.t. x_T (1, H, W, C).

    warm_states: (T, H, W, C) solver warm start for the chain states (phantom: rows 1..T of the
    inversion state, official = the initial x repeated; implicit: the T states).
    """
    T = problem.t.shape[0]
    if warm_states.shape != (T,) + x_T.shape[1:]:
        raise ValueError(f"warm_states must have shape {(T,) + x_T.shape[1:]}, got {tuple(warm_states.shape)}")
    fn = _phantom_loss if cfg.gradient == "phantom" else _implicit_loss
    (loss, (states, result)), grad = jax.value_and_grad(fn, has_aux=True)(
        x_T, warm_states, eps_fn, op, problem, loss_fn, cfg, nw, etw, use_svd, sharding
    )
    return StepOutput(loss=loss, grad=grad, states=states, solve=result)


def optimize_init(
    eps_fn: fp.EpsFn,
    op: Any,
    x_T: Array,
    problem: Problem,
    loss_fn: LossFn,
    cfg: InitOptConfig = InitOptConfig(),
    *,
    nw: float = 0.0,
    etw: float = 0.0,
    use_svd: bool = True,
    sharding=None,
) -> InitOptResult:
    """Adam on x_T (1, H, W, C) for ``cfg.n_epochs`` epochs in one ``lax.while_loop``.

    Stops after the epoch whose loss is below ``cfg.early_stop``. The phantom solver is warm-started
    from x_T's initial value repeated (rows the official optimiser never changes). Jit-able; wrap it
    in ``jax.jit`` with the model parameters as arguments of the jitted function.
    """
    if x_T.ndim != 4 or x_T.shape[0] != 1:
        raise ValueError(f"x_T must be one NHWC image (1, H, W, C), got {tuple(x_T.shape)}")
    T = problem.t.shape[0]
    x_T = x_T.astype(jnp.float32)
    warm = jnp.repeat(x_T, T, axis=0)
    opt = cfg.optimizer()
    n = cfg.n_epochs

    def step(s):
        out = loss_and_grad(eps_fn, op, s["x"], warm, problem, loss_fn, cfg, nw=nw, etw=etw,
                            use_svd=use_svd, sharding=sharding)
        updates, opt_state = opt.update(out.grad, s["opt"], s["x"])
        better = out.loss < s["best_loss"]
        e = s["epoch"]
        return dict(
            epoch=e + 1,
            x=optax.apply_updates(s["x"], updates),
            opt=opt_state,
            best_x=jnp.where(better, s["x"], s["best_x"]),
            best_loss=jnp.where(better, out.loss, s["best_loss"]),
            losses=s["losses"].at[e].set(out.loss),
            evals=s["evals"].at[e].set(out.solve.n_evals),
            stop=out.loss < cfg.early_stop,
        )

    init = dict(
        epoch=jnp.int32(0), x=x_T, opt=opt.init(x_T), best_x=x_T, best_loss=jnp.float32(jnp.inf),
        losses=jnp.full((n,), jnp.nan, jnp.float32), evals=jnp.full((n,), -1, jnp.int32),
        stop=jnp.bool_(False),
    )
    s = jax.lax.while_loop(lambda s: (s["epoch"] < n) & ~s["stop"], step, init)
    return InitOptResult(best_x_T=s["best_x"], best_loss=s["best_loss"], losses=s["losses"],
                         n_epochs=s["epoch"], x_T=s["x"], solver_evals=s["evals"])
