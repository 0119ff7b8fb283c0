"""The command line shared by the task trainers (``python -m deqir_jax.train``, ``python -m resshift_jax.train``).

:func:`train_cli` parses ``--config FILE --workdir DIR [--export DIR [--overwrite]]`` and calls the task's
``train`` function. That function first calls :func:`check_run` (workdir / export paths, and on resume the
network the workdir was trained with), opens its data (:func:`ircore.data.open_training_source`), builds its
:class:`ircore.trainer.Trainer` and ends with :func:`fit_task` (fit, ``config.json`` once the set-up succeeded,
EMA export).

Resuming with a changed config: the sections a task names as its *network* (DeqIR: ``model``, ``diffusion``;
ResShift: ``model``, ``autoencoder``, ``diffusion``) must equal those the workdir was trained with (its
``config.json``, else its latest checkpoint's record), because the checkpoint's weights (and the noise schedule
they predict for) belong to them. Every other section (``train``: total_steps, lr, log / checkpoint intervals,
...; ``data``; loss weights) may change on resume: that is how a run is extended or fine-tuned.

Exit status: 0 when training finished, 1 with one ``error: ...`` line for a user mistake, 130 / 143 after a
SIGINT / SIGTERM (the current step is saved first; :class:`ircore.trainer.Stopped`).
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
from absl import app, flags, logging

from ircore import checkpoints, config_cli, data, files
from ircore.checkpoints import export_ema
from ircore.mesh import initialize_distributed
from ircore.trainer import CHECKPOINT_DIR, EXIT_CODES, Stopped, Trainer, TrainSetupError, TrainState, check_train_config

CONFIG_NAME = "config.json"
MAX_LISTED_FIELDS = 6  # differing network fields named in the error line


# ----------------------------------------------------------------------------------------------- paths
def _inside(child: pathlib.Path, parent: pathlib.Path) -> bool:
    """Whether resolved ``child`` is ``parent`` or below it."""
    return child == parent or parent in child.parents


def _creatable(path: pathlib.Path, flag: str) -> None:
    """:class:`TrainSetupError` unless ``path`` (absent) can be made: its nearest existing ancestor is a
    writable folder."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise TrainSetupError(f"cannot create {flag} {path}: {ancestor} is a file; pick another {flag}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise TrainSetupError(f"cannot create {flag} {path}: {ancestor} is not writable; pick another {flag}")


def check_paths(workdir: str | os.PathLike, export: Optional[str] = None, *, overwrite: bool = False) -> None:
    """One-line :class:`TrainSetupError` for a workdir that is a file, unreadable or not creatable; an export
    folder equal to the workdir, inside it or around it; an existing export without ``--overwrite``."""
    work = pathlib.Path(workdir).expanduser()
    if work.exists():
        if not work.is_dir():
            raise TrainSetupError(f"--workdir {work} is a file, not a folder; pick another --workdir")
        if not os.access(work, os.R_OK | os.W_OK | os.X_OK):
            raise TrainSetupError(f"--workdir {work} is not readable and writable (permissions); fix them or pick "
                                  f"another --workdir")
    else:
        _creatable(work.absolute(), "--workdir")
    if not export:
        return
    out = pathlib.Path(export).expanduser()
    w, e = pathlib.Path(os.path.realpath(work)), pathlib.Path(os.path.realpath(out))
    if _inside(e, w) or _inside(w, e):
        where = "is" if e == w else ("is inside" if _inside(e, w) else "contains")
        raise TrainSetupError(f"--export {out} {where} the --workdir {work}; the export must be a separate folder "
                              f"(e.g. --export {w.parent / (w.name + '_export')})")
    if out.exists() and not overwrite:
        raise TrainSetupError(f"export folder {out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise TrainSetupError(f"--export {out} is a file, not a folder; pick another --export")
    if not out.exists():
        _creatable(out.absolute(), "--export")
    try:  # the export's own rules (files this program did not write, links, ...) before hours of training
        checkpoints.check_target(out, overwrite=overwrite, protect=(work,), flag="--export")
    except (ValueError, OSError) as err:
        raise TrainSetupError(str(err)) from None


# ----------------------------------------------------------------------------------------------- network
def _flatten(tree: Any, prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"<prefix>.a.b": 1}`` (lists / scalars are leaves)."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}"))
    return out


_UNSET = "<unset>"


def network_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                        sections: Iterable[str]) -> list[tuple[str, Any, Any]]:
    """``(field, saved value, current value)`` for every dotted field of ``sections`` that differs between two
    JSON config dicts (``<unset>`` where a field or section is absent on one side), in name order."""
    diffs = []
    for section in sections:
        a = _flatten(saved.get(section, {}), section) if section in saved else {section: _UNSET}
        b = _flatten(current.get(section, {}), section) if section in current else {section: _UNSET}
        for name in sorted(set(a) | set(b)):
            if a.get(name, _UNSET) != b.get(name, _UNSET):
                diffs.append((name, a.get(name, _UNSET), b.get(name, _UNSET)))
    return diffs


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def saved_config(workdir: str | os.PathLike) -> Optional[dict]:
    """The config a workdir was trained with: its ``config.json``, else the record of its newest checkpoint
    (``checkpoints/<step>/meta/metadata``), else None (a fresh workdir). Unreadable: :class:`TrainSetupError`."""
    work = pathlib.Path(workdir)
    path = work / CONFIG_NAME
    if not path.exists():
        steps = sorted((int(p.name), p) for p in (work / CHECKPOINT_DIR).glob("*") if p.name.isdigit()) \
            if (work / CHECKPOINT_DIR).is_dir() else []
        for _, step_dir in reversed(steps):
            record = step_dir / "meta" / "metadata"
            try:
                config = json.loads(record.read_text(encoding="utf-8")).get("config")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(config, dict):
                return config
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TrainSetupError(f"cannot read {path} ({' '.join(str(err).split())[:120]}); it is not a config this "
                              f"trainer wrote: pick another --workdir") from None
    if not isinstance(config, dict):
        raise TrainSetupError(f"{path} is not a config this trainer wrote: pick another --workdir")
    return config


def check_network(cfg: Any, workdir: str | os.PathLike, sections: Iterable[str]) -> None:
    """:class:`TrainSetupError` naming the differing fields when ``workdir`` was trained with another network
    (the config ``sections`` that decide it, see the module docstring)."""
    saved = saved_config(workdir)
    if saved is None:
        return
    diffs = network_differences(saved, json.loads(cfg.to_json_best_effort()), tuple(sections))
    if not diffs:
        return
    unset = sum(_UNSET in (old, new) for _, old, new in diffs)
    if 2 * unset > len(diffs):  # mostly fields one side does not have: a different kind of model
        name = f" {saved['name']!r}" if isinstance(saved.get("name"), str) else ""
        raise TrainSetupError(f"workdir {workdir} holds a run of another model{name} ({len(diffs)} network fields "
                              f"differ, e.g. {diffs[0][0]}): use another --workdir")
    shown = diffs[:MAX_LISTED_FIELDS]
    more = f" (and {len(diffs) - len(shown)} more)" if len(diffs) > len(shown) else ""
    then = ", ".join(f"{name}={_show(old)}" for name, old, _ in shown)
    now = ", ".join(_show(new) for _, _, new in shown)
    raise TrainSetupError(f"workdir {workdir} was trained with {then}{more}; this config has {now}: use another "
                          f"--workdir or the config it was trained with")


def check_run(cfg: Any, workdir: str | os.PathLike, *, export: Optional[str] = None, overwrite: bool = False,
              network: Iterable[str] = ("model",)) -> None:
    """Everything about the run that can fail without a model, checked before any model is built or file
    written: :func:`ircore.trainer.check_train_config`, :func:`check_paths` and :func:`check_network`."""
    check_train_config(cfg.train)
    check_paths(workdir, export, overwrite=overwrite)
    check_network(cfg, workdir, network)


# ----------------------------------------------------------------------------------------------- fit
def fit_task(tr: Trainer, cfg: Any, workdir: str | os.PathLike, *, export: Optional[str] = None,
             overwrite: bool = False, export_metadata: Optional[Mapping[str, Any]] = None,
             print_fn: Any = print, source: Any = None) -> TrainState:
    """The common tail of a task's ``train``: fits ``tr`` on the crops of ``cfg.data``
    (:func:`ircore.data.make_train_batches` over ``source`` or the one ``cfg.data`` names, seeded by
    ``cfg.train.seed``), writes ``workdir/config.json`` once the state is restored or made (so a failed set-up
    leaves it as it was) and, with ``export``, writes the final EMA parameters there
    (:func:`ircore.checkpoints.export_ema` with ``export_metadata``). A run stopped by a signal saves its step
    (:meth:`Trainer.fit`), skips the export and raises :class:`ircore.trainer.Stopped`."""
    workdir = pathlib.Path(workdir)
    batches = data.make_train_batches(cfg.data, seed=int(cfg.train.seed), global_batch=tr.global_batch,
                                      rows=tr.local_rows, source=source)

    def write_config(_start: int) -> None:
        if jax.process_index() == 0:
            files.write_text(workdir / CONFIG_NAME, cfg.to_json_best_effort(indent=2))

    state = tr.fit(batches, on_ready=write_config)
    if tr.stopped_by is not None:
        raise Stopped(tr.stopped_by, int(jax.device_get(state.step)), workdir)
    if export:
        export_ema(state, export, export_metadata, overwrite=overwrite)
        if print_fn is not None and jax.process_index() == 0:
            print_fn(f"exported the EMA parameters of step {int(state.step)} to {export}", flush=True)
    return state


# ----------------------------------------------------------------------------------------------- CLI
def run_reporting(train: Callable[[], Any], errors: tuple, workdir: str) -> None:
    """Runs ``train()``; a user mistake (``errors`` and the shared set-up / data errors) becomes one
    ``error:`` line and exit 1, a stop by a signal its line and exit 130 / 143, Ctrl-C outside the loop one
    line and exit 130 (never a traceback)."""
    try:
        train()
    except Stopped as stop:
        print(str(stop), file=sys.stderr, flush=True)
        raise SystemExit(stop.exit_code) from None
    except KeyboardInterrupt:
        print(f"interrupted by SIGINT outside the train loop (set-up or export); every checkpoint in {workdir} is "
              f"complete: rerun the same command to resume", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CODES["SIGINT"]) from None
    except (*errors, TrainSetupError, data.DataError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def train_cli(train_fn: Callable[..., Any], *, config_help: str, errors: tuple, argv: Optional[list] = None) -> None:
    """``python -m <task>.train --config FILE --workdir DIR [--export DIR [--overwrite]]``: runs
    ``train_fn(cfg, workdir, export=..., overwrite=...)`` after ``jax.distributed`` set-up; ``errors`` are
    reported as one line (exit status 1)."""
    prog = f"{config_cli.module_name(train_fn).split('.')[0]}.train"
    config_flag = config_cli.define_config_flag(prog, help_string=f"{config_help}: a preset name or a file path",
                                                argv=argv)
    workdir_flag = flags.DEFINE_string("workdir", None, "folder for checkpoints and logs (resumes if present)")
    export_flag = flags.DEFINE_string("export", None, "write the final EMA parameters to this folder")
    overwrite_flag = flags.DEFINE_bool("overwrite", False, "replace an existing --export folder")
    flags.mark_flags_as_required(["config", "workdir"])

    def run(_):
        if not flags.FLAGS["verbosity"].present:  # orbax logs every save step at INFO
            logging.set_verbosity(logging.WARNING)
        initialize_distributed()
        run_reporting(lambda: train_fn(config_flag.value, workdir_flag.value, export=export_flag.value,
                                       overwrite=overwrite_flag.value), errors, workdir_flag.value)

    app.run(run, argv=argv, flags_parser=config_cli.flags_parser(prog))
