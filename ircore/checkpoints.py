"""orbax checkpoints: parameter trees (the samplers' weights) and training states (the train loop's).

Parameter checkpoints (:func:`save_params` / :func:`restore_params` / :func:`restore_metadata`): one directory
written by orbax's composite checkpointer::

    <directory>/params/      the parameter pytree (orbax StandardSave: OCDBT/zarr arrays)
    <directory>/metadata/    the metadata dict as JSON (config, provenance, ...)

Atomicity: orbax writes into a temporary sibling directory (``<name>.orbax-checkpoint-tmp-*``) and renames it
to ``<directory>`` only once every item is complete, so an interrupted save leaves either no ``<directory>``
or a temporary one that :func:`restore_params` refuses (orbax checks that the path is finalized). With
``overwrite=True`` the new checkpoint is first written completely under a temporary name and only then swapped
in for the old one, so a failed save never destroys the existing checkpoint.

Ownership: every folder :func:`save_params` writes carries a manifest, ``ircore_checkpoint.json`` (the writer
and the entries it wrote), added to the staged folder before it is renamed into place. Overwriting replaces
only a folder of ours: one whose entries are all in its manifest, or (checkpoints written before manifests
existed) a plain orbax parameter checkpoint holding nothing but orbax's own entries (``params``, ``metadata``,
``_CHECKPOINT_METADATA``, ``commit_success.txt``). Anything else is refused, with or without ``overwrite``, and
an empty existing folder is used as if it were absent. :func:`check_target` runs these checks (and the
writability of the parent) on their own, so that a CLI can refuse before any work. Restoring never needs the
manifest.

Training checkpoints (:class:`TrainCheckpoints`): an orbax ``CheckpointManager`` under
``workdir/checkpoints`` with one numbered step folder per save, each holding the train state (item ``state``)
and a JSON record (item ``meta``: step, data position, config). Saves run in the background; orbax writes each
step into a temporary folder and renames it when complete, so a save interrupted by a kill leaves the previous
step as the latest usable one. :func:`export_ema` turns a train state into a parameter checkpoint.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import uuid
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from ircore import files

PARAMS_ITEM = "params"
METADATA_ITEM = "metadata"
STATE_ITEM = "state"
META_ITEM = "meta"
CHECKPOINT_DIR = "checkpoints"
MANIFEST = "ircore_checkpoint.json"
WRITER = "ircore.checkpoints.save_params"
# what orbax itself puts in a parameter checkpoint: a folder holding only these (and params) is ours even
# without a manifest (written before manifests existed)
ORBAX_ENTRIES = frozenset({PARAMS_ITEM, METADATA_ITEM, "_CHECKPOINT_METADATA", "_METADATA", "commit_success.txt"})


def _checkpointer() -> ocp.Checkpointer:
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(PARAMS_ITEM, ocp.args.StandardSave, ocp.StandardCheckpointHandler)
    registry.add(PARAMS_ITEM, ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
    registry.add(METADATA_ITEM, ocp.args.JsonSave, ocp.JsonCheckpointHandler)
    registry.add(METADATA_ITEM, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(handler_registry=registry))


def _metadata_dict(metadata: Mapping[str, Any] | None) -> dict:
    if metadata is None:
        return {}
    if hasattr(metadata, "to_dict"):  # ml_collections.ConfigDict
        metadata = metadata.to_dict()
    if not isinstance(metadata, Mapping):
        raise ValueError(f"checkpoint metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(dict(metadata)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint metadata is not JSON-serialisable: {err}") from None


def _save_args(tree_item: str, tree: Any, json_item: str, record: Mapping[str, Any] | None) -> ocp.args.Composite:
    """orbax arguments that save the pytree ``tree`` as ``tree_item`` and the JSON ``record`` as ``json_item``."""
    return ocp.args.Composite(**{tree_item: ocp.args.StandardSave(tree),
                                 json_item: ocp.args.JsonSave(_metadata_dict(record))})


def _absolute(directory: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(directory).expanduser().absolute()


def _read_manifest(path: pathlib.Path) -> Optional[dict]:
    """The manifest of the folder ``path`` if it holds a valid one written by :func:`save_params`, else ``None``."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("writer") != WRITER:
        return None
    entries = manifest.get("entries")
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        return None
    return manifest


def foreign_entries(directory: str | os.PathLike) -> list[str]:
    """Names in the existing folder ``directory`` that :func:`save_params` did not write (sorted).

    ``[]`` for an empty folder and for a checkpoint of ours: every entry listed in its manifest, or, without a
    manifest, a plain orbax parameter checkpoint (a ``params`` item and nothing beyond :data:`ORBAX_ENTRIES`).
    """
    path = pathlib.Path(directory)
    names = sorted(entry.name for entry in path.iterdir())
    if not names:
        return []
    manifest = _read_manifest(path)
    if manifest is not None:
        ours = set(manifest["entries"]) | {MANIFEST}
    else:
        ours = ORBAX_ENTRIES if (path / PARAMS_ITEM).is_dir() else frozenset()
    return [name for name in names if name not in ours]


def _is_within(inner: pathlib.Path, outer: pathlib.Path) -> bool:
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents


def _listing(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_target(
    directory: str | os.PathLike,
    *,
    overwrite: bool = False,
    protect: tuple[str | os.PathLike, ...] = (),
    flag: str = "--out",
) -> pathlib.Path:
    """Checks, without writing anything, that :func:`save_params` may write ``directory``; returns it absolute.

    Refuses when ``directory`` is empty, is or contains one of the ``protect`` paths (e.g. the converter's
    source file), is a symbolic link or an existing file, holds entries this program did not write
    (:func:`foreign_entries`; even with ``overwrite``), is an existing checkpoint of ours and ``overwrite`` is
    False, or when the folder it would be created in is not writable. ``flag`` names the command-line flag in
    the messages.

    Raises:
      ValueError: ``directory`` is empty, or a protected path lies inside it.
      FileExistsError: an existing file, link or foreign folder, or an existing checkpoint without ``overwrite``.
      PermissionError: the parent folder is read-only or not writable.
    """
    if not os.fspath(directory).strip():
        raise ValueError(f"{flag} is empty; name the output folder")
    path = _absolute(directory)
    for guarded in protect:
        if _is_within(_absolute(guarded), path):
            raise ValueError(f"{flag} {path} would replace {guarded}, which it contains; choose another {flag}")
    if path.is_symlink():  # replacing it would swap the link, not the folder it names
        raise FileExistsError(f"{flag} {path} is a symbolic link (to {os.path.realpath(path)}); pass the folder "
                              f"itself or another {flag}")
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{flag} {path} is an existing file, not a folder; choose another {flag}")
        foreign = foreign_entries(path)
        if foreign:
            raise FileExistsError(f"{path} holds files this program did not write ({_listing(foreign)}); "
                                  f"choose another {flag} or remove them yourself")
        if not overwrite and any(path.iterdir()):
            raise FileExistsError(f"checkpoint {path} already exists; pass --overwrite (overwrite=True from "
                                  f"Python) to replace it")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise FileExistsError(f"{flag} {path} cannot be created: {parent} is a file; choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path} cannot be written: {parent} is read-only or not writable; "
                              f"choose another {flag}")
    return path


def _shared_token() -> str:
    """A random name suffix that every process of a multi-host job agrees on."""
    token = uuid.uuid4().int & 0x7FFFFFFF
    if jax.process_count() > 1:
        token = int(multihost_utils.broadcast_one_to_all(np.int32(token)))
    return f"{token:08x}"


def _write_manifest(folder: pathlib.Path) -> None:
    entries = sorted(entry.name for entry in folder.iterdir())
    files.write_json(folder / MANIFEST, {"writer": WRITER, "entries": entries})


def _swap_in(staged: pathlib.Path, path: pathlib.Path, retired: pathlib.Path, flag: str) -> None:
    """Renames the finished ``staged`` folder to ``path``, retiring (then deleting) a previous folder of ours."""
    if not (path.exists() or path.is_symlink()):
        os.replace(staged, path)
        return
    foreign = foreign_entries(path) if path.is_dir() else [path.name]
    if foreign:  # something appeared since check_target: keep it, drop our copy
        shutil.rmtree(staged, ignore_errors=True)
        raise FileExistsError(f"{path} holds files this program did not write ({_listing(foreign)}); "
                              f"choose another {flag} or remove them yourself")
    os.replace(path, retired)
    os.replace(staged, path)
    shutil.rmtree(retired, ignore_errors=True)


def save_params(
    directory: str | os.PathLike,
    params: Any,
    metadata: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    protect: tuple[str | os.PathLike, ...] = (),
    flag: str = "--out",
) -> pathlib.Path:
    """Writes ``params`` (any pytree of arrays) and ``metadata`` (JSON-able dict) to ``directory``.

    The checks of :func:`check_target` (with ``protect`` and ``flag``) come first (``FileExistsError`` for an
    existing checkpoint unless ``overwrite``, and always for a folder holding files not written here). The
    checkpoint is written completely under a temporary sibling name, given its manifest, and renamed into
    place, so ``directory`` is either absent, the old checkpoint or the complete new one. Returns the absolute
    path. Call it on every process of a multi-host job with the same (shared) path; only process 0 writes the
    manifest, renames and deletes.
    """
    path = check_target(directory, overwrite=overwrite, protect=protect, flag=flag)
    args = _save_args(PARAMS_ITEM, params, METADATA_ITEM, _metadata_dict(metadata))
    path.parent.mkdir(parents=True, exist_ok=True)
    token = _shared_token()
    staged = path.with_name(f"{path.name}.new-{token}")
    retired = path.with_name(f"{path.name}.old-{token}")
    try:
        _checkpointer().save(staged, args=args)
        if jax.process_index() == 0:
            _write_manifest(staged)
            _swap_in(staged, path, retired, flag)
    except BaseException:
        if jax.process_index() == 0:
            for leftover in path.parent.glob(f"{staged.name}*"):
                shutil.rmtree(leftover, ignore_errors=True)
        raise
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"ircore.checkpoints.save_params:{path}")
    return path


def _check_restorable(path: pathlib.Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"checkpoint {path} is not a directory")
    if not (path / PARAMS_ITEM).is_dir():
        raise ValueError(f"{path} is not a parameter checkpoint written by save_params (no '{PARAMS_ITEM}' item)")


def restore_params(directory: str | os.PathLike, target: Any = None) -> Any:
    """Reads the parameter pytree saved by :func:`save_params`.

    Args:
      directory: the checkpoint directory.
      target: optional pytree of arrays or ``jax.ShapeDtypeStruct`` (with shardings) giving the structure,
        dtypes and placement to restore into; without it, arrays come back as saved, on the default devices.

    Raises:
      FileNotFoundError: the directory does not exist.
      ValueError: it is not a finished checkpoint written by :func:`save_params`.
    """
    path = _absolute(directory)
    _check_restorable(path)
    if target is None:
        try:
            meta = _checkpointer().metadata(path)
        except (ValueError, OSError) as err:
            raise ValueError(f"cannot read checkpoint {path}: {err}") from None
        tree = meta.item_metadata[PARAMS_ITEM] if hasattr(meta, "item_metadata") else meta[PARAMS_ITEM]
        target = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(
                tuple(m.shape), np.dtype(m.dtype), sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])
            ),
            tree,
        )
    try:
        restored = _checkpointer().restore(
            path, args=ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardRestore(target)})
        )
    except ValueError as err:
        raise ValueError(f"cannot restore checkpoint {path}: {err}") from None
    return restored[PARAMS_ITEM]


def restore_metadata(directory: str | os.PathLike) -> dict:
    """Reads the metadata dict saved by :func:`save_params` (``{}`` if none was given)."""
    path = _absolute(directory)
    _check_restorable(path)
    if not (path / METADATA_ITEM).is_dir():
        return {}
    restored = _checkpointer().restore(path, args=ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()}))
    return dict(restored[METADATA_ITEM])


# ----------------------------------------------------------------------------------------------- training
class TrainCheckpoints:
    """orbax ``CheckpointManager`` for a train state (any pytree) plus a JSON ``meta`` record per step.

    Args:
      directory: the manager's folder (the train loop uses ``workdir/checkpoints``).
      every: the save interval in steps (saves with ``force=True`` ignore it).
      keep: how many of the latest steps to keep.
      async_save: write in the background (:meth:`wait` blocks until the writes are done).
    """

    def __init__(self, directory: str | os.PathLike, *, every: int, keep: int, async_save: bool = True):
        self.directory = _absolute(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(int(every), 1),
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE_ITEM, META_ITEM))

    def latest_step(self) -> Optional[int]:
        """The newest finished step, or ``None`` when there is none."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every finished step still kept, oldest first."""
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: Mapping[str, Any], *, force: bool = False) -> bool:
        """Starts a save (returns at once, the write goes on in the background) when ``step`` is on the interval
        or ``force``; returns whether one was started. Note that orbax also saves the first step it is offered
        when no checkpoint exists yet unless the caller filters (the train loop passes only due steps)."""
        return self.manager.save(int(step), args=_save_args(STATE_ITEM, state, META_ITEM, meta), force=force)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """``(state, meta)`` of ``step``; ``abstract_state`` (``ShapeDtypeStruct`` leaves with shardings) gives
        the structure, dtypes and placement."""
        restored = self.manager.restore(
            int(step),
            args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                                       META_ITEM: ocp.args.JsonRestore()}),
        )
        return restored[STATE_ITEM], dict(restored[META_ITEM])

    def restore_ema_params(self, step: int) -> Any:
        """The ``ema_params`` of the train state saved at ``step``, on the default device, read without building
        the train state (for evaluating a run's kept checkpoints)."""
        reader = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(create=False),
            item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(), META_ITEM: ocp.JsonCheckpointHandler()})
        tree = reader.item_metadata(int(step))[STATE_ITEM]
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype), sharding=device), tree)
        restored = reader.restore(int(step), args=ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardRestore(abstract)}))
        reader.close()
        return restored[STATE_ITEM]["ema_params"]

    def wait(self) -> None:
        """Blocks until every background save has finished."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def export_ema(state: Any, directory: str | os.PathLike, metadata: Mapping[str, Any] | None = None, *,
               overwrite: bool = False, protect: tuple[str | os.PathLike, ...] = (),
               flag: str = "--export") -> pathlib.Path:
    """Writes ``state.ema_params`` of a train state as a parameter checkpoint (:func:`save_params`, with its
    ownership rules), the form the samplers load; ``metadata`` gets ``step`` added. Call it on every process
    (the arrays may be sharded). ``protect=(workdir,)`` refuses an export folder that is or contains the run's
    workdir; a trainer can run :func:`check_target` with the same arguments before training."""
    meta = {**_metadata_dict(metadata), "step": int(jax.device_get(state.step))}
    return save_params(directory, state.ema_params, meta, overwrite=overwrite, protect=protect, flag=flag)
