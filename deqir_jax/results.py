"""Writing one restored image's results into its folder, atomically (:mod:`ircore.files`,
:func:`ircore.images.write_png`).

``restored.png``, ``measurement.png`` (a picture of y), ``reference.png`` (when there is one),
``side_by_side.png`` (labelled: degraded y | A^+ y | restored | reference, with scores and a zoomed crop row,
:func:`ircore.figures.comparison`), ``convergence.png`` (parallel solves: relative residual
per map evaluation) and ``metrics.json`` (the record).
"""
from __future__ import annotations

import pathlib
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


def check_outputs_free(output: str, folder_names: Sequence[str], overwrite: bool) -> None:
    """FileExistsError (one line) if ``output/<name>/`` already holds results and ``overwrite`` is off."""
    if not output or overwrite:
        return
    for name in folder_names:
        folder = pathlib.Path(output) / name
        existing = [n for n in OUTPUT_FILES if (folder / n).exists()]
        if existing:
            raise FileExistsError(f"{folder} already holds {', '.join(existing)}; use --config.overwrite=True")


def write_result(folder: pathlib.Path, result: ImageResult) -> None:
    """Writes every output file of ``result`` into ``folder`` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
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
