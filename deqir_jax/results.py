"""Writing one restored image's results into its folder, atomically (:mod:`ircore.files`,
:func:`ircore.images.write_png`): the files go into a hidden ``.<name>.partial-<hex>`` folder that is renamed
onto ``<name>/`` when complete, so an image folder is either absent, complete, or the earlier complete one.

``restored.png``, ``measurement.png`` (a picture of y), ``reference.png`` (when there is one),
``side_by_side.png`` (labelled: degraded y | A^+ y | restored | reference, with scores and a zoomed crop row,
:func:`ircore.figures.comparison`), ``convergence.png`` (parallel solves: relative residual
per map evaluation) and ``metrics.json`` (the record).
"""
from __future__ import annotations

import os
import pathlib
import re
import uuid
from typing import NamedTuple, Sequence

import numpy as np

from ircore import figures, files, images

OUTPUT_FILES = ("restored.png", "measurement.png", "side_by_side.png", "metrics.json", "convergence.png")


class ImageResult(NamedTuple):
    """One image's restoration: ``record`` (JSON-ready: metrics, iterations, residual history, NFE, wall time,
    paths); ``restored`` (1, H, W, 3) and ``measurement`` (a picture of y) in [-1, 1]; ``reference``
    (1, H, W, 3) or None; ``baseline`` (1, H, W, 3) the pseudo-inverse A^+ y; ``residuals`` (rounds,) relative residual per round, NaN padded, or None (no
    parallel solve); ``title`` of the convergence plot."""

    record: dict
    restored: np.ndarray
    measurement: np.ndarray
    reference: np.ndarray | None
    residuals: np.ndarray | None
    title: str
    baseline: np.ndarray | None = None


# An image folder is written as a hidden sibling ``.<name>.partial-<12 hex>`` and renamed into place when
# complete; an overwritten finished folder is first moved aside to ``.<name>.old-<12 hex>``.
_STAGING = re.compile(r"\.(?P<name>.+)\.(?:partial|old)-[0-9a-f]{12}")
# The hidden temporary files of ircore.files.atomic_path (``.<stem>.<12 hex>.tmp<suffix>``).
_ATOMIC_TMP = re.compile(r"\..+\.[0-9a-f]{12}\.tmp(\.[A-Za-z0-9]+)?")
OURS = OUTPUT_FILES + ("reference.png",)


class FolderState(NamedTuple):
    """What ``<output>/<name>/`` holds now: ``finished`` (it has metrics.json), ``foreign`` (names of files
    this program does not write; refused: we never delete them), ``exists``."""

    exists: bool
    finished: bool
    foreign: tuple[str, ...]


def is_ours(entry: pathlib.Path) -> bool:
    """Whether ``entry`` (in an image folder) is a file this module writes, or one of its temporary files."""
    return entry.is_file() and (entry.name in OURS or bool(_ATOMIC_TMP.fullmatch(entry.name)))


def folder_state(folder: pathlib.Path) -> FolderState:
    """The :class:`FolderState` of one image's result folder (ValueError if the path is a file)."""
    if not folder.exists():
        return FolderState(False, False, ())
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a result folder; move it away or choose another --config.output")
    foreign = tuple(sorted(e.name for e in folder.iterdir() if not is_ours(e)))
    return FolderState(True, (folder / "metrics.json").is_file(), foreign)


def remove_ours(folder: pathlib.Path) -> bool:
    """Deletes the files of ours in ``folder`` and the folder if that leaves it empty; returns whether it is
    gone. Anything else in it stays (and so does the folder)."""
    for entry in list(folder.iterdir()):
        if is_ours(entry):
            entry.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        return False
    return True


def clean_staging(output: pathlib.Path, names: Sequence[str]) -> list[pathlib.Path]:
    """Removes the staging folders (``.<name>.partial-*`` / ``.<name>.old-*``) a killed run left in ``output``
    for the image ``names`` of this run, if they hold only our files; returns the ones removed."""
    if not output.is_dir():
        return []
    wanted, removed = set(names), []
    for entry in sorted(output.iterdir()):
        match = _STAGING.fullmatch(entry.name)
        if match and match["name"] in wanted and entry.is_dir() and remove_ours(entry):
            removed.append(entry)
    return removed


def _staging(folder: pathlib.Path, kind: str) -> pathlib.Path:
    return folder.with_name(f".{folder.name}.{kind}-{uuid.uuid4().hex[:12]}")


def write_result(folder: pathlib.Path, result: ImageResult) -> None:
    """Writes every output file of ``result`` into ``folder`` atomically as a whole: the files go into a
    hidden sibling folder that is renamed onto ``folder`` when complete. An existing ``folder`` must hold
    only our files (:func:`folder_state`); it is moved aside and deleted only after the new one is in place.
    A failure or Ctrl-C part-way removes the staging folder and leaves ``folder`` as it was."""
    state = folder_state(folder)
    if state.foreign:
        raise FileExistsError(foreign_message(folder, state.foreign))
    staging = _staging(folder, "partial")
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir()
    try:
        _write_files(staging, result)
        if state.exists:
            retired = _staging(folder, "old")
            os.replace(folder, retired)
            os.replace(staging, folder)
            remove_ours(retired)
        else:
            os.replace(staging, folder)
    except BaseException:
        if staging.exists():
            remove_ours(staging)
        raise


def foreign_message(folder: pathlib.Path, foreign: Sequence[str]) -> str:
    """The one-line refusal for a result folder holding files this program did not write."""
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return (f"{folder} holds files deqir_jax.sample did not write ({shown}); move them away or choose another "
            f"--config.output")


def _write_files(folder: pathlib.Path, result: ImageResult) -> None:
    """Writes the output files of ``result`` into the existing ``folder``; metrics.json last."""
    images.write_png(folder / "restored.png", result.restored)
    images.write_png(folder / "measurement.png", result.measurement)
    images.write_png(folder / "side_by_side.png", comparison_figure(result))
    if result.reference is not None:
        images.write_png(folder / "reference.png", result.reference)
    if result.residuals is not None:
        plot_convergence(result.residuals, folder / "convergence.png", result.title)
    files.write_json(folder / "metrics.json", result.record)


def comparison_figure(result: ImageResult) -> np.ndarray:
    """The labelled side-by-side: degraded y | A^+ y | restored | reference, scores in the labels."""
    record = result.record
    panels = [("degraded y", result.measurement)]
    if result.baseline is not None:
        panels.append((figures.score_label("A+y", record.get("baseline")), result.baseline))
    panels.append((figures.score_label("restored", record if "psnr" in record else None), result.restored))
    if result.reference is not None:
        panels.append(("reference", result.reference))
    return figures.comparison(panels)


def plot_convergence(residuals: np.ndarray, path: pathlib.Path, title: str) -> None:
    """Relative residual per map evaluation (log scale; NaN padding dropped), written atomically as PNG."""
    import matplotlib  # noqa: PLC0415 (only the writer needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    finite = residuals[np.isfinite(residuals)]
    ax.semilogy(np.arange(1, len(finite) + 1), np.maximum(finite, 1e-12), "o-")
    ax.set_xlabel("map evaluation")
    ax.set_ylabel("relative residual ||F(X)-X|| / ||F(X)||")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    try:
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
