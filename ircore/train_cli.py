"""The command line shared by the task trainers (``python -m deqir_jax.train``, ``python -m resshift_jax.train``).

:func:`train_cli` parses ``--config FILE --workdir DIR [--export DIR [--overwrite]]`` and calls the task's
``train`` function; that function builds its :class:`ircore.trainer.Trainer` and ends with :func:`fit_task`
(config record, data pipeline, fit, EMA export).
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Mapping, Optional

import jax
from absl import app, flags, logging

from ircore import config_cli, data, files
from ircore.checkpoints import export_ema
from ircore.mesh import initialize_distributed
from ircore.trainer import Trainer, TrainState


def fit_task(tr: Trainer, cfg: Any, workdir: str | os.PathLike, *, export: Optional[str] = None,
             overwrite: bool = False, export_metadata: Optional[Mapping[str, Any]] = None,
             print_fn: Any = print) -> TrainState:
    """The common tail of a task's ``train``: writes ``workdir/config.json``, fits ``tr`` on the crops of
    ``cfg.data`` (:func:`ircore.data.make_train_batches`, seeded by ``cfg.train.seed``) and, with ``export``,
    writes the final EMA parameters there (:func:`ircore.checkpoints.export_ema` with ``export_metadata``)."""
    workdir = pathlib.Path(workdir)
    if jax.process_index() == 0:
        files.write_text(workdir / "config.json", cfg.to_json_best_effort(indent=2))
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
        try:
            train_fn(config_flag.value, workdir_flag.value, export=export_flag.value, overwrite=overwrite_flag.value)
        except errors as err:
            raise SystemExit(f"error: {err}") from None

    app.run(run, argv=argv, flags_parser=config_cli.flags_parser(prog))
