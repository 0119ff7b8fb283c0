"""A generic sharded train loop: state, one jitted step, accumulation, EMA, checkpoints, preemption, logging.

Nothing here knows about a particular model. A task supplies

* ``init_params(key) -> params`` (float32 master weights; the model's compute dtype is its own business),
* ``loss_fn(params, frozen, batch, key) -> (loss, {name: scalar})`` for one micro-batch,
* ``frozen``: a pytree of arrays the loss needs but does not train (e.g. an autoencoder, LPIPS),
* ``batches(start_step) -> iterator`` of *process-local* batches (dicts of numpy arrays whose leading axis is
  this process's rows of the global batch, see :func:`local_batch_rows`), deterministic in ``start_step``.

Parallelism: a :class:`jax.sharding.Mesh` with axes ``("data", "fsdp")``. The batch is split over both axes;
every parameter / optimizer / EMA leaf with at least ``fsdp_min_size`` elements is split over ``fsdp`` along
its largest divisible dimension (ZeRO-3 style: XLA gathers it where it is used), smaller leaves are replicated.
The same code runs on one CPU, 8 virtual CPU devices, a GPU box or a TPU pod slice (one process per host,
:func:`ircore.mesh.initialize_distributed` first).

Determinism: the step's PRNG key is ``fold_in(state.rng, state.step)``, and the data order depends only on the
seed and the step, so a run resumed from a checkpoint repeats an uninterrupted one exactly.

Checkpoints: an orbax ``CheckpointManager`` under ``workdir/checkpoints`` saves asynchronously every
``checkpoint_every`` steps, keeps ``keep_checkpoints``, and always saves the last step and on SIGTERM
(preemption; multi-process runs use JAX's preemption sync point so every process stops at the same step).
orbax writes each step into a temporary folder and renames it when complete, so a save interrupted by a kill
leaves the previous checkpoint as the latest usable one.
"""
from __future__ import annotations

import collections
import math
import os
import pathlib
import signal
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ircore import mesh as mesh_lib
from ircore.logging_utils import MetricLogger

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
STATE_ITEM = "state"
META_ITEM = "meta"
CHECKPOINT_DIR = "checkpoints"

LossFn = Callable[[Any, Any, Any, jax.Array], "tuple[jax.Array, Mapping[str, jax.Array]]"]


# ----------------------------------------------------------------------------------------------- config
def default_config() -> ml_collections.ConfigDict:
    """The ``train`` section every task config carries (ResShift journal recipe as defaults)."""
    return ml_collections.ConfigDict({
        "seed": 123456,
        "global_batch": 96,
        "accum_steps": 1,  # micro-batches per step (gradient accumulation); each one is global_batch / accum_steps
        "total_steps": 400_000,
        "lr": 5e-5,
        "lr_min": 2e-5,
        "warmup_steps": 5000,
        "lr_schedule": "cosine",  # "cosine" (journal configs) or "constant" (v1/v2) after the linear warm-up
        "adam_b1": 0.9,
        "adam_b2": 0.999,
        "adam_eps": 1e-8,
        "weight_decay": 0.0,
        "grad_clip_norm": 0.0,  # global-norm clipping; 0 = off (the official trainer does not clip)
        "ema_decay": 0.999,
        "ema_warmup": False,  # decay min(ema_decay, (1 + step) / (10 + step)): short runs forget the init
        "mesh_shape": (-1, 1),  # (data, fsdp); -1 = all remaining devices
        "fsdp_min_size": 2**18,  # leaves with at least this many elements are sharded over "fsdp"
        "log_every": 100,
        "checkpoint_every": 5000,
        "keep_checkpoints": 3,
        "async_checkpoints": True,
        "eval_every": 10_000,
        "tensorboard": True,
        "max_inflight_steps": 2,  # steps dispatched ahead of the host (more is no faster; unbounded async
                                  # dispatch of multi-process CPU collectives can deadlock)
        "fast_compile": False,  # CPU only: compile with LLVM optimisations off (tests / smoke runs: ~2x faster
                                # compilation, slower steps); ignored on GPU / TPU
    })


# ----------------------------------------------------------------------------------------------- sharding
def make_mesh(shape: Any = (-1, 1), devices: Optional[list] = None) -> Mesh:
    """A ``("data", "fsdp")`` mesh over ``devices`` (default: all devices of all processes)."""
    return mesh_lib.make_mesh(BATCH_AXES, tuple(shape), devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data`` x ``fsdp``."""
    return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(shape: tuple[int, ...], mesh: Mesh, min_size: int) -> P:
    """Shard the largest dimension divisible by the ``fsdp`` size when the leaf is big enough; else replicate."""
    n = mesh.shape[FSDP_AXIS]
    if n == 1 or math.prod(shape) < min_size:
        return P()
    best = None
    for i, d in enumerate(shape):
        if d % n == 0 and (best is None or d >= shape[best]):
            best = i
    if best is None:
        return P()
    spec = [None] * len(shape)
    spec[best] = FSDP_AXIS
    return P(*spec)


def tree_shardings(tree: Any, mesh: Mesh, min_size: int) -> Any:
    """:func:`fsdp_spec` shardings for every leaf of ``tree`` (arrays or ``ShapeDtypeStruct``)."""
    return jax.tree_util.tree_map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), mesh, min_size)), tree)


def local_batch_rows(mesh: Mesh, global_batch: int) -> tuple[int, int]:
    """``(start, stop)``: the rows of a global batch that live on this process's devices (contiguous)."""
    sharding = batch_sharding(mesh)
    if global_batch % sharding.num_devices:
        raise ValueError(
            f"global batch {global_batch} is not divisible by the {sharding.num_devices} devices of the mesh"
        )
    rows = set()
    for index in sharding.addressable_devices_indices_map((global_batch,)).values():
        rows.update(range(*index[0].indices(global_batch)))
    start, stop = min(rows), max(rows) + 1
    if len(rows) != stop - start:
        raise ValueError("this process's batch rows are not contiguous; order the mesh devices by process")
    return start, stop


def to_global(local: Any, mesh: Mesh, global_batch: int) -> Any:
    """Process-local batch (numpy leaves with this process's rows) -> global arrays sharded over the batch."""
    sharding = batch_sharding(mesh)

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, (global_batch,) + x.shape[1:])

    return jax.tree_util.tree_map(one, local)


def put_replicated_or_sharded(tree: Any, mesh: Mesh, min_size: int) -> Any:
    """Host arrays (identical on every process) -> device arrays with :func:`tree_shardings`."""
    shardings = tree_shardings(tree, mesh, min_size)
    return jax.tree_util.tree_map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx, x=x: np.asarray(x)[idx]),
        tree, shardings,
    )


# ----------------------------------------------------------------------------------------------- optimizer
def learning_rate_schedule(
    *, lr: float, lr_min: float, warmup_steps: int, total_steps: int, kind: str = "cosine"
) -> optax.Schedule:
    """Official ResShift schedule as a function of the optimizer update count ``c`` (iteration ``c + 1``).

    ``lr * it / warmup`` for ``it <= warmup``; afterwards cosine annealing from ``lr`` to ``lr_min`` over
    ``total_steps - warmup`` iterations (``kind="cosine"``) or constant ``lr`` (``kind="constant"``).
    """
    if kind not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {kind!r}")
    if lr <= 0 or lr_min < 0 or warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"bad learning-rate settings lr={lr}, lr_min={lr_min}, warmup={warmup_steps}, "
                         f"total={total_steps}")
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
    return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, P(None, BATCH_AXES)))


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
            micro_batches = jax.tree_util.tree_map(lambda x: _split_micro(x, accum_steps, mesh), batch)
            first = jax.tree_util.tree_map(lambda x: x[0], micro_batches)
            shapes = jax.eval_shape(micro, state.params, first, key)
            zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

            def body(carry, xs):
                mb, a = xs
                g, m = micro(state.params, mb, jax.random.fold_in(key, a))
                return jax.tree_util.tree_map(jnp.add, carry, (g, m)), None

            (grads, metrics), _ = jax.lax.scan(body, zeros, (micro_batches, jnp.arange(accum_steps)))
            grads, metrics = jax.tree_util.tree_map(lambda x: x / accum_steps, (grads, metrics))

        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = jnp.float32(ema_decay)
        if ema_warmup:
            n = state.step.astype(jnp.float32)
            decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        metrics = jax.tree_util.tree_map(lambda m: jnp.asarray(m, jnp.float32), metrics)
        return state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state), metrics

    return step


# ----------------------------------------------------------------------------------------------- checkpoints
class Checkpoints:
    """orbax ``CheckpointManager`` for :class:`TrainState` plus a JSON ``meta`` record (step, data position...)."""

    def __init__(self, directory: str | os.PathLike, *, every: int, keep: int, async_save: bool = True):
        import orbax.checkpoint as ocp  # noqa: PLC0415 (heavy; configs import this module for default_config)

        self._ocp = ocp
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(int(every), 1),
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE_ITEM, META_ITEM))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: TrainState, meta: Mapping[str, Any], *, force: bool = False) -> bool:
        """Starts a save (returns at once, the write goes on in the background) when ``step`` is on the interval
        or ``force``; returns whether one was started. Note that orbax also saves the first step it is offered
        when no checkpoint exists yet unless the caller filters (the train loop passes only due steps)."""
        ocp = self._ocp
        return self.manager.save(
            int(step),
            args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                       META_ITEM: ocp.args.JsonSave(dict(meta))}),
            force=force,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[TrainState, dict]:
        ocp = self._ocp
        restored = self.manager.restore(
            int(step),
            args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                                       META_ITEM: ocp.args.JsonRestore()}),
        )
        return restored[STATE_ITEM], dict(restored[META_ITEM])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def export_ema(state: TrainState, directory: str | os.PathLike, metadata: Mapping[str, Any] | None = None, *,
               overwrite: bool = False) -> pathlib.Path:
    """Writes ``state.ema_params`` as a parameter checkpoint (:func:`ircore.checkpoints.save_params`), the form
    the samplers load; ``metadata`` gets ``step`` added. Call it on every process (the arrays may be sharded)."""
    from ircore import checkpoints  # noqa: PLC0415 (orbax is heavy; configs import this module)

    meta = {**dict(metadata or {}), "step": int(jax.device_get(state.step))}
    return checkpoints.save_params(directory, state.ema_params, meta, overwrite=overwrite)


def fit_task(tr: "Trainer", cfg: Any, workdir: str | os.PathLike, *, export: Optional[str] = None,
             overwrite: bool = False, export_metadata: Optional[Mapping[str, Any]] = None,
             print_fn: Any = print) -> TrainState:
    """The common tail of a task's ``train``: writes ``workdir/config.json``, fits ``tr`` on the crops of
    ``cfg.data`` (:func:`ircore.data.make_train_batches`, seeded by ``cfg.train.seed``) and, with ``export``,
    writes the final EMA parameters there (:func:`export_ema` with ``export_metadata``)."""
    from ircore import data  # noqa: PLC0415 (grain is imported lazily there; configs import this module)

    workdir = pathlib.Path(workdir)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    batches = data.make_train_batches(cfg.data, seed=int(cfg.train.seed), global_batch=tr.global_batch,
                                      rows=tr.local_rows)
    state = tr.fit(batches)
    if export:
        export_ema(state, export, export_metadata, overwrite=overwrite)
        if print_fn is not None and jax.process_index() == 0:
            print_fn(f"exported the EMA parameters of step {int(state.step)} to {export}", flush=True)
    return state


def train_cli(train_fn: Callable[..., Any], *, config_help: str, errors: tuple, argv: Optional[list] = None) -> None:
    """``python -m <task>.train --config FILE --workdir DIR [--export DIR [--overwrite]]``: runs
    ``train_fn(cfg, workdir, export=..., overwrite=...)`` after ``jax.distributed`` set-up; ``errors`` are
    reported as one line (exit status 1)."""
    from absl import app, flags, logging  # noqa: PLC0415
    from ml_collections import config_flags  # noqa: PLC0415

    from ircore.mesh import initialize_distributed  # noqa: PLC0415

    config_flag = config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    workdir_flag = flags.DEFINE_string("workdir", None, "folder for checkpoints and logs (resumes if present)")
    export_flag = flags.DEFINE_string("export", None, "write the final EMA parameters to this folder")
    overwrite_flag = flags.DEFINE_bool("overwrite", False, "replace an existing --export folder")
    flags.mark_flags_as_required(["config", "workdir"])

    def run(_):
        if not flags.FLAGS["verbosity"].present:  # orbax logs every save step at INFO
            logging.set_verbosity(logging.WARNING)
        initialize_distributed()
        try:
            train_fn(config_flag.value, workdir_flag.value, export=export_flag.value, overwrite=overwrite_flag.value)
        except errors as err:
            raise SystemExit(f"error: {err}") from None

    app.run(run, argv=argv)


# ----------------------------------------------------------------------------------------------- preemption
class PreemptionWatcher:
    """Tells the loop when to stop for a SIGTERM.

    One process: a SIGTERM handler sets a flag (installed only from the main thread). Several processes:
    JAX's preemption sync point (set up by ``jax.distributed.initialize``), which makes every process agree on
    the step at which to stop.
    """

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._previous = None
        self._multi = jax.process_count() > 1
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._flag.set()

    def reached(self, step: int) -> bool:
        if self._multi:
            from jax.experimental import multihost_utils  # noqa: PLC0415

            try:
                return bool(multihost_utils.reached_preemption_sync_point(int(step)))
            except RuntimeError:  # no preemption service (distributed runtime not initialised that way)
                return False
        return self._flag.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


# ----------------------------------------------------------------------------------------------- compiling
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class _CompileOnce:
    """A jitted function compiled on first call with extra XLA options (same call signature as the jit)."""

    def __init__(self, jitted: Callable, options: Mapping[str, Any]):
        self.jitted, self.options, self._compiled = jitted, dict(options), None

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)

    def __call__(self, *args):
        if self._compiled is None:
            self._compiled = self.jitted.lower(*args).compile(compiler_options=self.options)
        return self._compiled(*args)


def _maybe_fast(jitted: Callable, fast: bool) -> Callable:
    if fast and jax.default_backend() == "cpu":
        return _CompileOnce(jitted, FAST_COMPILE_OPTIONS)
    return jitted


# ----------------------------------------------------------------------------------------------- the loop
EvalFn = Callable[[TrainState], "tuple[Mapping[str, float], Mapping[str, np.ndarray]]"]


class Trainer:
    """Builds the sharded state and step for a task and runs the loop with checkpoints and logs.

    Args:
      cfg: the ``train`` config section (:func:`default_config`).
      workdir: logs in ``workdir``, checkpoints in ``workdir/checkpoints``.
      init_params: ``key -> params`` (float32).
      loss_fn: ``(params, frozen, batch, key) -> (loss, metrics)``.
      frozen: pytree of host arrays (same on every process) used by the loss but not trained.
      mesh: defaults to :func:`make_mesh` with ``cfg.mesh_shape``.
      eval_fn: ``state -> (scalars, images)``, run on every process every ``cfg.eval_every`` steps.
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
        self.mesh = mesh if mesh is not None else make_mesh(cfg.mesh_shape)
        self.global_batch = int(cfg.global_batch)
        if self.global_batch % (self.mesh.size * int(cfg.accum_steps)):
            raise ValueError(
                f"global_batch {self.global_batch} must be divisible by devices x accum_steps = "
                f"{self.mesh.size} x {cfg.accum_steps}"
            )
        self.local_rows = local_batch_rows(self.mesh, self.global_batch)
        self.eval_fn = eval_fn
        self.metadata = dict(metadata or {})
        self.print_fn = print_fn
        self.tx, self.schedule = make_optimizer(cfg)
        self._init_params = init_params

        key = jax.random.key(int(cfg.seed))
        self._init_key, self._state_key = jax.random.split(key)
        abstract = jax.eval_shape(self._make_state)
        self.state_shardings = tree_shardings(abstract, self.mesh, int(cfg.fsdp_min_size))
        self.abstract_state = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.state_shardings
        )
        self.frozen = None if frozen is None else put_replicated_or_sharded(frozen, self.mesh,
                                                                           int(cfg.fsdp_min_size))
        frozen_shardings = None if frozen is None else jax.tree_util.tree_map(lambda x: x.sharding, self.frozen)
        step = make_train_step(loss_fn, self.tx, self.schedule, mesh=self.mesh,
                               accum_steps=int(cfg.accum_steps), ema_decay=float(cfg.ema_decay),
                               ema_warmup=bool(cfg.get("ema_warmup", False)))
        self._fast = bool(cfg.get("fast_compile", False))
        self.train_step = _maybe_fast(jax.jit(
            step,
            in_shardings=(self.state_shardings, frozen_shardings, batch_sharding(self.mesh)),
            out_shardings=(self.state_shardings, NamedSharding(self.mesh, P())),
            donate_argnums=(0,),
        ), self._fast)

    # -- state
    def _make_state(self) -> TrainState:
        return create_state(self._init_params(self._init_key), self.tx, self._state_key)

    def init_state(self) -> TrainState:
        """A fresh state, born sharded. Its (random-initialiser heavy) program is always compiled without LLVM
        optimisations on a CPU: it runs once, and that halves the compile time."""
        return _maybe_fast(jax.jit(self._make_state, out_shardings=self.state_shardings), True)()

    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.workdir / CHECKPOINT_DIR, every=int(self.cfg.checkpoint_every),
                           keep=int(self.cfg.keep_checkpoints), async_save=bool(self.cfg.async_checkpoints))

    def restore_or_init(self, ckpt: Checkpoints) -> tuple[TrainState, int]:
        """The latest finished checkpoint, else a fresh state; returns ``(state, step)``."""
        latest = ckpt.latest_step()
        if latest is None:
            return self.init_state(), 0
        state, meta = ckpt.restore(latest, self.abstract_state)
        data_step = int(meta.get("data_step", latest))
        if int(jax.device_get(state.step)) != latest or data_step != latest:
            raise ValueError(f"checkpoint {latest} is inconsistent: state step {int(state.step)}, data {data_step}")
        return state, latest

    def _meta(self, step: int) -> dict:
        return {"step": int(step), "data_step": int(step), "global_batch": self.global_batch, **self.metadata}

    # -- loop
    def fit(self, batches: Callable[[int], Iterable[Any]], total_steps: Optional[int] = None) -> TrainState:
        """Trains until ``total_steps`` (default ``cfg.total_steps``) or a SIGTERM; returns the final state.

        ``batches(start_step)`` must yield this process's rows (:attr:`local_rows`) of global batches
        ``start_step, start_step + 1, ...``.
        """
        total = int(self.cfg.total_steps if total_steps is None else total_steps)
        lead = jax.process_index() == 0
        logger = MetricLogger(self.workdir, enabled=lead, tensorboard=bool(self.cfg.tensorboard),
                              print_fn=self.print_fn)
        ckpt = self.checkpoints()
        watcher = PreemptionWatcher()
        try:
            state, start = self.restore_or_init(ckpt)
            logger.truncate_after(start)
            if lead and self.print_fn is not None:
                how = f"resumed from step {start}" if start else "started from scratch"
                self.print_fn(f"{how}; mesh {dict(self.mesh.shape)}, global batch {self.global_batch}, "
                              f"{jax.process_count()} process(es)", flush=True)
            state = self._loop(state, start, total, batches, ckpt, logger, watcher)
            ckpt.wait()
            return state
        finally:
            watcher.close()
            ckpt.close()
            logger.close()

    def _loop(self, state, start, total, batches, ckpt, logger, watcher) -> TrainState:
        cfg = self.cfg
        iterator: Iterator[Any] = iter(batches(start))
        window_start, window_steps = None, 0
        inflight: collections.deque = collections.deque()
        max_inflight = max(int(cfg.get("max_inflight_steps", 2)), 1)
        step = start
        while step < total:
            if watcher.reached(step):
                ckpt.wait()
                if step not in ckpt.all_steps():
                    ckpt.save(step, state, self._meta(step), force=True)
                    ckpt.wait()
                logger.scalars(step, {"preempted": 1}, kind="event", echo=False)
                if self.print_fn is not None and jax.process_index() == 0:
                    self.print_fn(f"preempted: saved step {step}", flush=True)
                return state
            batch = to_global(next(iterator), self.mesh, self.global_batch)
            state, metrics = self.train_step(state, self.frozen, batch)
            step += 1
            inflight.append(metrics)
            if len(inflight) > max_inflight:
                jax.block_until_ready(inflight.popleft())
            if window_start is None:  # exclude compilation from the timing
                jax.block_until_ready(metrics)
                window_start = time.perf_counter()
            else:
                window_steps += 1
            if step % int(cfg.checkpoint_every) == 0 or step == total:
                paused = _Pause(metrics)  # the save's blocking part is not training time
                ckpt.save(step, state, self._meta(step), force=True)
                if self.print_fn is not None and jax.process_index() == 0:
                    self.print_fn(f"checkpoint: saving step {step}", flush=True)
                window_start = paused.shift(window_start)
            if step % int(cfg.log_every) == 0 or step == total:
                host = jax.device_get(metrics)
                scalars = {name: float(value) for name, value in host.items()}
                if window_steps:
                    now = time.perf_counter()
                    scalars["step_time"] = (now - window_start) / window_steps
                    scalars["images_per_sec"] = self.global_batch / scalars["step_time"]
                    window_start, window_steps = now, 0
                logger.scalars(step, scalars)
            if self.eval_fn is not None and cfg.eval_every and (step % int(cfg.eval_every) == 0 or step == total):
                paused = _Pause(metrics)
                scalars, images = self.eval_fn(state)
                logger.scalars(step, scalars, kind="eval")
                logger.images(step, images, kind="eval")
                window_start = paused.shift(window_start)
        return state


class _Pause:
    """Measures a pause in training (after the pending step has finished) to leave it out of the step time."""

    def __init__(self, pending: Any):
        jax.block_until_ready(pending)
        self.start = time.perf_counter()

    def shift(self, window_start: Optional[float]) -> Optional[float]:
        if window_start is None:
            return None
        return window_start + (time.perf_counter() - self.start)
