"""A generic sharded train loop: state, one jitted step, accumulation, EMA, checkpoints, preemption, logging.

Nothing here knows about a particular model. A task supplies

* ``init_params(key) -> params`` (float32 master weights; the model's compute dtype is its own business),
* ``loss_fn(params, frozen, batch, key) -> (loss, {name: scalar})`` for one micro-batch,
* ``frozen``: a pytree of arrays the loss needs but does not train (e.g. an autoencoder, LPIPS),
* ``batches(start_step) -> iterator`` of *process-local* batches (dicts of numpy arrays whose leading axis is
  this process's rows of the global batch, see :func:`ircore.mesh.local_batch_rows`), deterministic in
  ``start_step``,

and the ``train`` config section (:func:`ircore.train_config.train_defaults`).

Parallelism: a :class:`jax.sharding.Mesh` with axes ``("data", "fsdp")`` (:func:`ircore.mesh.make_mesh` with
:data:`ircore.mesh.BATCH_AXES`). The batch is split over both axes; every parameter / optimizer / EMA leaf
with at least ``fsdp_min_size`` elements is split over ``fsdp`` along its largest divisible dimension
(ZeRO-3 style: XLA gathers it where it is used, :func:`ircore.mesh.fsdp_spec`), smaller leaves are replicated.
The same code runs on one CPU, 8 virtual CPU devices, a GPU box or a TPU pod slice (one process per host,
:func:`ircore.mesh.initialize_distributed` first).

Determinism: the step's PRNG key is ``fold_in(state.rng, state.step)``, and the data order depends only on the
seed and the step, so a run resumed from a checkpoint repeats an uninterrupted one exactly.

Console: a tqdm progress bar (steps/s, ETA, last logged loss) on process 0 when stderr is a terminal or
``cfg.progress_bar == "on"`` (``"off"``: never), above which the log lines of every ``log_every`` steps print.

Checkpoints (:class:`ircore.checkpoints.TrainCheckpoints` under ``workdir/checkpoints``): saved in the
background every ``checkpoint_every`` steps, ``keep_checkpoints`` kept, and always at the last step and on
SIGTERM (preemption; multi-process runs use JAX's preemption sync point so every process stops at the same
step) or Ctrl-C (SIGINT, single process); :attr:`Trainer.stopped_by` then names the signal, and the CLI exits
130 (SIGINT) or 143 (SIGTERM) so that a scheduler can tell a stopped run from a finished one. An unreadable
training image met mid-run saves the current step too, then raises :class:`ircore.data.DataError`.
"""
from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import signal
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ircore import mesh as mesh_lib
from ircore.checkpoints import CHECKPOINT_DIR, TrainCheckpoints
from ircore.compiling import maybe_fast
from ircore.data import DataError
from ircore.logging_utils import PROGRESS_MODES, MetricLogger, print_above, progress_bar

LossFn = Callable[[Any, Any, Any, jax.Array], "tuple[jax.Array, Mapping[str, jax.Array]]"]
EvalFn = Callable[["TrainState"], "tuple[Mapping[str, float], Mapping[str, np.ndarray]]"]


EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + signal number: what a shell reports for the signal


class Stopped(Exception):
    """Training stopped early by a signal after saving its step (raised by the CLI tail, not by
    :meth:`Trainer.fit`, which returns the state and sets :attr:`Trainer.stopped_by`)."""

    def __init__(self, signal_name: str, step: int, workdir: str | os.PathLike):
        self.signal_name, self.step, self.workdir = signal_name, int(step), str(workdir)
        self.exit_code = EXIT_CODES.get(signal_name, 1)
        super().__init__(f"stopped by {signal_name} at step {self.step}; checkpoint saved in {self.workdir}; "
                         f"rerun the same command to resume")


class TrainSetupError(ValueError):
    """A ``train`` config or workdir problem the user fixes (one-line message)."""


# ----------------------------------------------------------------------------------------------- optimizer
def learning_rate_schedule(
    *, lr: float, lr_min: float, warmup_steps: int, total_steps: int, kind: str = "cosine"
) -> optax.Schedule:
    """Official ResShift schedule as a function of the optimizer update count ``c`` (iteration ``c + 1``).

    ``lr * it / warmup`` for ``it <= warmup``; afterwards cosine annealing from ``lr`` to ``lr_min`` over
    ``total_steps - warmup`` iterations (``kind="cosine"``) or constant ``lr`` (``kind="constant"``).
    """
    if kind not in ("cosine", "constant"):
        raise TrainSetupError(f"train.lr_schedule must be 'cosine' or 'constant', got {kind!r}")
    if lr <= 0 or lr_min < 0 or warmup_steps < 0 or total_steps < 1:
        raise TrainSetupError(f"bad learning-rate settings train.lr={lr}, train.lr_min={lr_min}, "
                              f"train.warmup_steps={warmup_steps}, train.total_steps={total_steps}: lr > 0, "
                              f"lr_min >= 0, warmup_steps >= 0 and total_steps >= 1 are needed")
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(count):
        it = jnp.asarray(count, jnp.float32) + 1.0
        warm = lr * it / max(warmup_steps, 1)
        if kind == "constant":
            after = jnp.asarray(lr, jnp.float32)
        else:
            progress = jnp.clip(it - warmup_steps, 0.0, decay_steps) / decay_steps
            after = lr_min + (lr - lr_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(it <= warmup_steps, warm, after)

    return schedule


def make_optimizer(cfg: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with the schedule above and optional global-norm clipping, from a ``train`` config section."""
    schedule = learning_rate_schedule(lr=cfg.lr, lr_min=cfg.lr_min, warmup_steps=cfg.warmup_steps,
                                      total_steps=cfg.total_steps, kind=cfg.lr_schedule)
    parts = []
    if cfg.grad_clip_norm and cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    parts.append(optax.adamw(schedule, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay))
    return optax.chain(*parts), schedule


def check_train_config(cfg: Any, devices: Optional[int] = None) -> None:
    """The ``train`` section checks that need no model (progress bar mode, learning-rate settings, batch
    divisibility over ``devices``, default all), as one-line :class:`TrainSetupError`; cheap, so tasks call it
    before building anything."""
    if str(cfg.get("progress_bar", "auto")) not in PROGRESS_MODES:
        raise TrainSetupError(f"train.progress_bar must be one of {PROGRESS_MODES}, got {cfg.progress_bar!r}")
    learning_rate_schedule(lr=cfg.lr, lr_min=cfg.lr_min, warmup_steps=cfg.warmup_steps,
                           total_steps=cfg.total_steps, kind=cfg.lr_schedule)
    devices = jax.device_count() if devices is None else devices
    if int(cfg.accum_steps) < 1 or int(cfg.global_batch) % (devices * int(cfg.accum_steps)):
        raise TrainSetupError(f"train.global_batch {cfg.global_batch} must be divisible by devices x "
                              f"train.accum_steps = {devices} x {cfg.accum_steps}")


# ----------------------------------------------------------------------------------------------- state
@struct.dataclass
class TrainState:
    """Everything a resumed run needs: ``step`` (int32), float32 ``params`` / ``ema_params``, ``opt_state``,
    and ``rng`` (raw uint32 key data; the step key is ``fold_in(rng, step)``)."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array


def create_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """Step 0: float32 copies of ``params`` as weights and EMA, a fresh optimizer state, ``rng``'s key data."""
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float32), params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params),
                      opt_state=tx.init(params), rng=jax.random.key_data(rng))


def _split_micro(x: jax.Array, accum: int, mesh: Mesh) -> jax.Array:
    """(B, ...) -> (accum, B/accum, ...) such that micro-batch ``a`` = rows ``a, a+accum, ...`` (no data moves
    between devices when ``accum`` divides the per-device batch)."""
    b = x.shape[0]
    if b % accum:
        raise ValueError(f"batch {b} is not divisible by accum_steps {accum}")
    y = jnp.swapaxes(x.reshape((b // accum, accum) + x.shape[1:]), 0, 1)
    return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, P(None, mesh_lib.BATCH_AXES)))


def _mean_over_micro_batches(micro: Callable, params: Any, batch: Any, key: jax.Array, accum_steps: int,
                             mesh: Mesh) -> tuple[Any, dict]:
    """Mean ``(grads, metrics)`` of ``micro(params, micro_batch, fold_in(key, a))`` over the ``accum_steps``
    micro-batches ``a`` of ``batch`` (:func:`_split_micro`), summed in a ``lax.scan``."""
    micro_batches = jax.tree_util.tree_map(lambda x: _split_micro(x, accum_steps, mesh), batch)
    first = jax.tree_util.tree_map(lambda x: x[0], micro_batches)
    shapes = jax.eval_shape(micro, params, first, key)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(carry, xs):
        mb, a = xs
        g, m = micro(params, mb, jax.random.fold_in(key, a))
        return jax.tree_util.tree_map(jnp.add, carry, (g, m)), None

    total, _ = jax.lax.scan(body, zeros, (micro_batches, jnp.arange(accum_steps)))
    return jax.tree_util.tree_map(lambda x: x / accum_steps, total)


def ema_decay_at(step: jax.Array, ema_decay: float, warmup: bool) -> jax.Array:
    """The EMA decay of update ``step`` (int scalar): ``ema_decay``, or with ``warmup``
    ``min(ema_decay, (1 + step) / (10 + step))``; float32 scalar."""
    decay = jnp.float32(ema_decay)
    if warmup:
        n = step.astype(jnp.float32)
        decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    return decay


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    mesh: Mesh,
    accum_steps: int = 1,
    ema_decay: float = 0.999,
    ema_warmup: bool = False,
) -> Callable[[TrainState, Any, Any], tuple[TrainState, dict]]:
    """The un-jitted step ``(state, frozen, batch) -> (state, metrics)``.

    Gradients of ``accum_steps`` micro-batches are averaged (a ``lax.scan``) before one AdamW update, then
    ``ema = decay * ema + (1 - decay) * params`` with ``decay = ema_decay`` (the official trainers), or with
    ``ema_warmup`` ``decay = min(ema_decay, (1 + n) / (10 + n))`` at update ``n`` (latent-diffusion's
    ``LitEma``), so a run of a few thousand steps keeps no trace of the random initialisation. Metrics: the
    loss terms (micro-batch means), ``grad_norm`` and ``lr`` (the rate used by this update).
    """
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")

    def step(state: TrainState, frozen: Any, batch: Any) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def micro(params, mb, k):
            (loss, aux), grads = grad_fn(params, frozen, mb, k)
            metrics = {"loss": loss, **aux}
            return jax.tree_util.tree_map(lambda g: g.astype(jnp.float32), grads), metrics

        if accum_steps == 1:
            grads, metrics = micro(state.params, batch, key)
        else:
            grads, metrics = _mean_over_micro_batches(micro, state.params, batch, key, accum_steps, mesh)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay_at(state.step, ema_decay, ema_warmup)
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        metrics = jax.tree_util.tree_map(lambda m: jnp.asarray(m, jnp.float32), metrics)
        return state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state), metrics

    return step


# ----------------------------------------------------------------------------------------------- preemption
def abort_now(workdir: str | os.PathLike) -> Callable[[], None]:
    """The default reaction to a second Ctrl-C: one line on stderr, then exit 130 at once (``os._exit``: no
    clean-up that could wait on the save in flight). orbax writes a save into a temporary folder and renames it
    only when whole, so no half-written checkpoint is left; the next run removes the temporary folder."""
    line = (f"\nstopped by a second SIGINT: the stop save is abandoned (no half-written checkpoint is left: orbax "
            f"renames a save into place only when whole); rerun the same command to resume from the newest "
            f"complete checkpoint in {workdir}\n").encode()

    def abort() -> None:
        os.write(2, line)
        os._exit(EXIT_CODES["SIGINT"])

    return abort


class PreemptionWatcher:
    """Tells the loop when to stop for a SIGTERM or a Ctrl-C (SIGINT).

    One process: SIGTERM and SIGINT handlers set a flag and remember which signal came (installed only from the
    main thread); the loop then saves the current step and stops. A second SIGINT calls ``on_second_sigint``
    (:func:`abort_now`: exit 130 at once, abandoning the save in flight; raising ``KeyboardInterrupt`` instead
    could leave orbax's manager waiting forever on the interrupted save). Several processes: JAX's preemption
    sync point (set up by ``jax.distributed.initialize``) for SIGTERM, which makes every process agree on the
    step at which to stop; SIGINT keeps its default behaviour there.
    """

    def __init__(self, on_second_sigint: Optional[Callable[[], None]] = None) -> None:
        self._flag = threading.Event()
        self._previous: dict[int, Any] = {}
        self._on_second_sigint = on_second_sigint or abort_now(".")
        self.stopped = False  # set by the loop when it stopped for the signal
        self._multi = jax.process_count() > 1
        self.signal_name: Optional[str] = None
        if threading.current_thread() is threading.main_thread():
            wanted = () if self._multi else (signal.SIGTERM, signal.SIGINT)
            for signum in wanted:
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        name = signal.Signals(signum).name
        if self._flag.is_set() and signum == signal.SIGINT:
            self._on_second_sigint()
            return
        if self.signal_name is None:
            self.signal_name = name
        self._flag.set()
        if signum == signal.SIGINT:  # async-signal-safe write: print() could re-enter a buffered stream
            os.write(2, b"\nSIGINT: saving the current step and stopping (Ctrl-C again aborts the save)\n")

    def reached(self, step: int) -> bool:
        """Whether the loop should stop before update ``step`` (every process gets the same answer)."""
        if self._multi:
            try:
                hit = bool(multihost_utils.reached_preemption_sync_point(int(step)))
            except RuntimeError:  # no preemption service (distributed runtime not initialised that way)
                return False
            if hit and self.signal_name is None:
                self.signal_name = "SIGTERM"
            return hit
        return self._flag.is_set()

    def close(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}


# ----------------------------------------------------------------------------------------------- the loop
class Trainer:
    """Builds the sharded state and step for a task and runs the loop with checkpoints and logs.

    Args:
      cfg: the ``train`` config section (:func:`ircore.train_config.train_defaults`).
      workdir: logs in ``workdir``, checkpoints in ``workdir/checkpoints``.
      init_params: ``key -> params`` (float32).
      loss_fn: ``(params, frozen, batch, key) -> (loss, metrics)``.
      frozen: pytree of host arrays (same on every process) used by the loss but not trained.
      mesh: defaults to a ``("data", "fsdp")`` mesh of shape ``cfg.mesh_shape`` over all devices.
      eval_fn: ``state -> (scalars, images)``, run on every process every ``cfg.eval_every`` steps; the scalars
        and images (NHWC / HWC, uint8 or [-1, 1], e.g. :func:`ircore.figures.comparison` panels) go to
        TensorBoard as ``eval/<name>``.
      metadata: JSON-able dict stored in each checkpoint's ``meta`` record (e.g. the full config).
      print_fn: where log lines go (process 0 only).
    """

    def __init__(
        self,
        cfg: Any,
        workdir: str | os.PathLike,
        *,
        init_params: Callable[[jax.Array], Any],
        loss_fn: LossFn,
        frozen: Any = None,
        mesh: Optional[Mesh] = None,
        eval_fn: Optional[EvalFn] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        print_fn: Any = print,
    ):
        self.cfg = cfg
        self.workdir = pathlib.Path(workdir)
        self.mesh = mesh if mesh is not None else mesh_lib.make_mesh(mesh_lib.BATCH_AXES, tuple(cfg.mesh_shape))
        self.global_batch = int(cfg.global_batch)
        check_train_config(cfg, self.mesh.size)
        if self.global_batch % (self.mesh.size * int(cfg.accum_steps)):
            raise TrainSetupError(
                f"train.global_batch {self.global_batch} must be divisible by devices x train.accum_steps = "
                f"{self.mesh.size} x {cfg.accum_steps}"
            )
        self.local_rows = mesh_lib.local_batch_rows(self.mesh, self.global_batch)
        self.eval_fn = eval_fn
        self.metadata = dict(metadata or {})
        self.print_fn = print_fn
        self.stopped_by: Optional[str] = None  # the signal that stopped the last fit (after its save), or None
        self.tx, self.schedule = make_optimizer(cfg)
        self._init_params = init_params
        self._init_key, self._state_key = jax.random.split(jax.random.key(int(cfg.seed)))

        min_size = int(cfg.fsdp_min_size)
        abstract = jax.eval_shape(self._make_state)
        self.state_shardings = mesh_lib.tree_shardings(abstract, self.mesh, min_size)
        self.abstract_state = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.state_shardings
        )
        self.frozen = None if frozen is None else mesh_lib.put_replicated_or_sharded(frozen, self.mesh, min_size)
        self.train_step = self._jit_step(loss_fn)

    def _jit_step(self, loss_fn: LossFn) -> Callable[[TrainState, Any, Any], tuple[TrainState, dict]]:
        """The jitted :func:`make_train_step` (state donated; fast CPU compile with ``cfg.fast_compile``)."""
        cfg = self.cfg
        step = make_train_step(loss_fn, self.tx, self.schedule, mesh=self.mesh,
                               accum_steps=int(cfg.accum_steps), ema_decay=float(cfg.ema_decay),
                               ema_warmup=bool(cfg.get("ema_warmup", False)))
        frozen_shardings = None if self.frozen is None else jax.tree_util.tree_map(lambda x: x.sharding,
                                                                                   self.frozen)
        return maybe_fast(jax.jit(
            step,
            in_shardings=(self.state_shardings, frozen_shardings, mesh_lib.batch_sharding(self.mesh)),
            out_shardings=(self.state_shardings, NamedSharding(self.mesh, P())),
            donate_argnums=(0,),
        ), bool(cfg.get("fast_compile", False)))

    # -- state
    def _make_state(self) -> TrainState:
        return create_state(self._init_params(self._init_key), self.tx, self._state_key)

    def init_state(self) -> TrainState:
        """A fresh state, born sharded. Its (random-initialiser heavy) program is always compiled without LLVM
        optimisations on a CPU: it runs once, and that halves the compile time."""
        return maybe_fast(jax.jit(self._make_state, out_shardings=self.state_shardings), True)()

    def checkpoints(self) -> TrainCheckpoints:
        """The checkpoint manager of ``workdir/checkpoints`` with the config's interval, count and async mode."""
        return TrainCheckpoints(self.workdir / CHECKPOINT_DIR, every=int(self.cfg.checkpoint_every),
                                keep=int(self.cfg.keep_checkpoints), async_save=bool(self.cfg.async_checkpoints))

    def restore_or_init(self, ckpt: TrainCheckpoints) -> tuple[TrainState, int]:
        """The latest finished checkpoint, else a fresh state; returns ``(state, step)``. A checkpoint whose
        state does not fit this model raises :class:`TrainSetupError` (one line)."""
        latest = ckpt.latest_step()
        if latest is None:
            return self.init_state(), 0
        try:
            state, meta = ckpt.restore(latest, self.abstract_state)
        except (ValueError, TypeError, KeyError) as err:
            detail = " ".join(str(err).split())[:200]
            raise TrainSetupError(f"checkpoint step {latest} in {ckpt.directory} does not fit this model "
                                  f"({detail}): use another --workdir or the config it was trained with") from None
        data_step = int(meta.get("data_step", latest))
        if int(jax.device_get(state.step)) != latest or data_step != latest:
            raise ValueError(f"checkpoint {latest} is inconsistent: state step {int(state.step)}, data {data_step}")
        return state, latest

    def _meta(self, step: int) -> dict:
        return {"step": int(step), "data_step": int(step), "global_batch": self.global_batch, **self.metadata}

    def _say(self, line: str, logger: MetricLogger) -> None:
        """A console line from process 0 through ``logger``'s printer (which keeps the progress bar intact)."""
        if logger.print_fn is not None and jax.process_index() == 0:
            logger.print_fn(line, flush=True)

    # -- loop
    def fit(self, batches: Callable[[int], Iterable[Any]], total_steps: Optional[int] = None, *,
            on_ready: Optional[Callable[[int], None]] = None) -> TrainState:
        """Trains until ``total_steps`` (default ``cfg.total_steps``), a SIGTERM or a SIGINT; returns the final
        state. After a signal the current step is saved and :attr:`stopped_by` names the signal (else None).

        ``batches(start_step)`` must yield this process's rows (:attr:`local_rows`) of global batches
        ``start_step, start_step + 1, ...``. ``on_ready(start_step)`` runs once the state is restored or made
        (the set-up succeeded), before the first step (the CLI writes ``config.json`` there).
        """
        self.stopped_by = None
        total = int(self.cfg.total_steps if total_steps is None else total_steps)
        logger = MetricLogger(self.workdir, enabled=jax.process_index() == 0,
                              tensorboard=bool(self.cfg.tensorboard), print_fn=self.print_fn)
        ckpt = self.checkpoints()
        watcher = PreemptionWatcher(abort_now(self.workdir))
        bar = None
        try:
            state, start = self.restore_or_init(ckpt)
            if on_ready is not None:
                on_ready(start)
            logger.truncate_after(start)
            how = f"resumed from step {start}" if start else "started from scratch"
            self._say(f"{how}; mesh {dict(self.mesh.shape)}, global batch {self.global_batch}, "
                      f"{jax.process_count()} process(es)", logger)
            bar = progress_bar(total=total, initial=start, mode=str(self.cfg.get("progress_bar", "auto")),
                               enabled=jax.process_index() == 0)
            logger.print_fn = print_above(bar, logger.print_fn)
            state = self._loop(state, start, total, batches, ckpt, logger, watcher, bar)
            ckpt.wait()
            self.stopped_by = watcher.signal_name if watcher.stopped else None
            return state
        finally:
            if bar is not None:
                bar.close()
            watcher.close()
            ckpt.close()
            logger.close()

    def _loop(self, state: TrainState, start: int, total: int, batches: Callable[[int], Iterable[Any]],
              ckpt: TrainCheckpoints, logger: MetricLogger, watcher: PreemptionWatcher, bar: Any) -> TrainState:
        """Steps ``start .. total - 1``, keeping at most ``cfg.max_inflight_steps`` steps dispatched ahead;
        ``bar`` (:func:`ircore.logging_utils.progress_bar`) advances once per step."""
        iterator: Iterator[Any] = iter(batches(start))
        clock = _StepClock(self.global_batch)
        inflight: collections.deque = collections.deque()
        max_inflight = max(int(self.cfg.get("max_inflight_steps", 2)), 1)
        for step in range(start, total):  # ``step`` updates done so far
            if watcher.reached(step):
                watcher.stopped = True
                self._save_preempted(step, state, ckpt, logger, watcher.signal_name or "SIGTERM")
                return state
            try:
                local = next(iterator)
            except DataError as err:  # an unreadable image met mid-run: keep the progress, then stop
                if jax.process_count() > 1:  # a save is collective: the other processes are not here
                    raise
                self._save_preempted(step, state, ckpt, logger, "a data error")
                raise DataError(f"{err} (step {step} is saved in {self.workdir}: rerun to resume)") from None
            batch = mesh_lib.to_global(local, self.mesh, self.global_batch)
            state, metrics = self.train_step(state, self.frozen, batch)
            inflight.append(metrics)
            if len(inflight) > max_inflight:
                jax.block_until_ready(inflight.popleft())
            clock.tick(metrics)
            bar.update(1)
            self._after_step(step + 1, total, state, metrics, ckpt, logger, clock, bar)
        return state

    def _after_step(self, step: int, total: int, state: TrainState, metrics: Any, ckpt: TrainCheckpoints,
                    logger: MetricLogger, clock: _StepClock, bar: Any) -> None:
        """The due checkpoint, log line and evaluation after update ``step`` (all three at the last step); the
        logged loss also goes to the progress bar ``bar``."""
        cfg, last = self.cfg, step == total
        if step % int(cfg.checkpoint_every) == 0 or last:
            with clock.paused(metrics):  # the save's blocking part is not training time
                ckpt.save(step, state, self._meta(step), force=True)
                self._say(f"checkpoint: saving step {step}", logger)
        if step % int(cfg.log_every) == 0 or last:
            scalars = {name: float(value) for name, value in jax.device_get(metrics).items()}
            logger.scalars(step, {**scalars, **clock.rates()})
            if "loss" in scalars:
                bar.set_postfix_str(f"loss {scalars['loss']:.4g}", refresh=False)
        if self.eval_fn is not None and cfg.eval_every and (step % int(cfg.eval_every) == 0 or last):
            with clock.paused(metrics):
                scalars, images = self.eval_fn(state)
                logger.scalars(step, scalars, kind="eval")
                logger.images(step, images, kind="eval")

    def _save_preempted(self, step: int, state: TrainState, ckpt: TrainCheckpoints, logger: MetricLogger,
                        cause: str = "SIGTERM") -> None:
        """After a signal (``cause``): makes sure ``step`` is saved (waiting for the write) and logs a
        ``preempted`` event."""
        ckpt.wait()
        if step not in ckpt.all_steps():
            ckpt.save(step, state, self._meta(step), force=True)
            ckpt.wait()
        logger.scalars(step, {"preempted": 1}, kind="event", echo=False)
        self._say(f"preempted: saved step {step} ({cause})", logger)


class _StepClock:
    """Step time and throughput over the steps since the last log line, leaving out compilation (the first
    step) and pauses (checkpoint saves, evaluation)."""

    def __init__(self, global_batch: int):
        self.global_batch = global_batch
        self.start: Optional[float] = None
        self.steps = 0

    def tick(self, metrics: Any) -> None:
        """Counts a dispatched step; the first one is waited for and starts the clock."""
        if self.start is None:
            jax.block_until_ready(metrics)
            self.start = time.perf_counter()
        else:
            self.steps += 1

    @contextlib.contextmanager
    def paused(self, pending: Any) -> Iterator[None]:
        """Waits for the ``pending`` step, then keeps the time spent in the block out of the step time."""
        jax.block_until_ready(pending)
        begin = time.perf_counter()
        yield
        if self.start is not None:
            self.start += time.perf_counter() - begin

    def rates(self) -> dict:
        """``{"step_time": s, "images_per_sec": n}`` since the last call (``{}`` without counted steps)."""
        if not self.steps:
            return {}
        now = time.perf_counter()
        step_time = (now - self.start) / self.steps
        self.start, self.steps = now, 0
        return {"step_time": step_time, "images_per_sec": self.global_batch / step_time}
