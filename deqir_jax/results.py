"""Writing one restored image's results into its folder, atomically (:mod:`ircore.files`,
:func:`ircore.images.write_png`).

``restored.png``, ``measurement.png`` (a picture of y), ``reference.png`` (when there is one),
``side_by_side.png`` (degraded | restored | reference), ``convergence.png`` (parallel solves: relative residual
per map evaluation) and ``metrics.json`` (the record).
"""
from __future__ import annotations

import pathlib
from typing import NamedTuple, Sequence

import numpy as np

from ircore import files, images

OUTPUT_FILES = ("restored.png", "measurement.png", "side_by_side.png", "metrics.json", "convergence.png")


class ImageResult(NamedTuple):
    """One image's restoration: ``record`` (JSON-ready: metrics, iterations, residual history, NFE, wall time,
    paths); ``restored`` (1, H, W, 3) and ``measurement`` (a picture of y) in [-1, 1]; ``reference``
    (1, H, W, 3) or None; ``residuals`` (rounds,) relative residual per round, NaN padded, or None (no
    parallel solve); ``title`` of the convergence plot."""

    record: dict
    restored: np.ndarray
    measurement: np.ndarray
    reference: np.ndarray | None
    residuals: np.ndarray | None
    title: str


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
    panels = [result.measurement, result.restored]
    if result.reference is not None:
        images.write_png(folder / "reference.png", result.reference)
        panels.append(result.reference)
    images.write_png(folder / "side_by_side.png", images.side_by_side(panels))
    if result.residuals is not None:
        plot_convergence(result.residuals, folder / "convergence.png", result.title)
    files.write_json(folder / "metrics.json", result.record)


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
