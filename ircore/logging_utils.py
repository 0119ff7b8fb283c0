"""Training logs: TensorBoard event files (``tensorboardX``, no TensorFlow), a JSONL file and a console line.

Only the process that owns the logger writes (normally ``jax.process_index() == 0``); the others get a
logger whose methods do nothing, so callers need no ``if``.

Files in ``workdir``: ``metrics.jsonl`` (one ``{"step": ..., "kind": "train"|"eval", ...}`` object per line)
and ``tensorboard/events.out.tfevents.*`` (scalars, and images such as the validation comparisons).
:func:`progress_bar` is the console's tqdm bar (steps/s, ETA) beside the per-N-steps lines.
"""
from __future__ import annotations

import io
import json
import math
import os
import pathlib
import struct
import sys
from typing import Any, Callable, Iterator, Mapping, Optional, TextIO

import numpy as np

from ircore import files

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
PROGRESS_MODES = ("auto", "on", "off")  # train.progress_bar: "auto" = only when stderr is a terminal


def _plain(value: Any) -> Any:
    """numpy / jax scalars -> Python numbers (NaN and inf kept as floats)."""
    arr = np.asarray(value)
    if arr.ndim != 0:
        raise ValueError(f"metric values must be scalars, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        return int(arr)
    return float(arr)


def format_line(step: int, scalars: Mapping[str, float], prefix: str = "") -> str:
    """``'step 120 | loss 0.01234 | lr 5.00e-05 | 0.412 s/step | 155.3 img/s'``."""
    parts = [f"{prefix}step {step}"]
    for name, value in scalars.items():
        if name == "step_time":
            parts.append(f"{value:.3f} s/step")
        elif name == "images_per_sec":
            parts.append(f"{value:.1f} img/s")
        elif name == "lr":
            parts.append(f"lr {value:.2e}")
        elif isinstance(value, float) and math.isfinite(value) and value != 0 and abs(value) < 1e-3:
            parts.append(f"{name} {value:.3e}")
        elif isinstance(value, float):
            parts.append(f"{name} {value:.5g}")
        else:
            parts.append(f"{name} {value}")
    return " | ".join(parts)


class MetricLogger:
    """Writes scalars and images to TensorBoard and scalars to JSONL; prints a concise line.

    Args:
      workdir: folder for ``metrics.jsonl`` and ``tensorboard/``.
      enabled: write anything at all (pass ``jax.process_index() == 0``).
      tensorboard: also write TensorBoard event files.
      print_fn: where the console line goes (``print`` by default; ``None`` for silence).
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True,
                 print_fn: Any = print):
        self.workdir = pathlib.Path(workdir)
        self.enabled = enabled
        self.print_fn = print_fn
        self._writer = None
        self._jsonl = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.workdir / JSONL_NAME, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter  # noqa: PLC0415 (optional at import time)

            self._writer = SummaryWriter(str(self.workdir / TENSORBOARD_DIR), flush_secs=30)

    def truncate_after(self, step: int) -> None:
        """Drops JSONL records with a step > ``step`` (used when resuming from an earlier checkpoint)."""
        if not self.enabled:
            return
        path = self.workdir / JSONL_NAME
        self._jsonl.close()
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        files.write_text(path, "".join(f"{line}\n" for line in kept))
        self._jsonl = open(path, "a", encoding="utf-8")

    def scalars(self, step: int, values: Mapping[str, Any], *, kind: str = "train", echo: bool = True) -> None:
        """Logs a dict of scalars at ``step`` (TensorBoard tag ``kind/name``)."""
        if not self.enabled:
            return
        plain = {name: _plain(value) for name, value in values.items()}
        self._jsonl.write(json.dumps({"step": int(step), "kind": kind, **plain}) + "\n")
        self._jsonl.flush()
        if self._writer is not None:
            for name, value in plain.items():
                self._writer.add_scalar(f"{kind}/{name}", value, int(step))
        if echo and self.print_fn is not None:
            self.print_fn(format_line(int(step), plain, prefix="" if kind == "train" else f"[{kind}] "), flush=True)

    def images(self, step: int, images: Mapping[str, Any], *, kind: str = "eval") -> None:
        """Logs uint8 or [-1, 1] float NHWC batches (or HWC images) to TensorBoard as ``kind/name``."""
        if not self.enabled or self._writer is None:
            return
        for name, img in images.items():
            arr = np.asarray(img)
            if arr.ndim == 3:
                arr = arr[None]
            if arr.ndim != 4:
                raise ValueError(f"image {name!r} must be HWC or NHWC, got shape {arr.shape}")
            if arr.dtype != np.uint8:
                arr = np.clip(np.round((arr.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
            self._writer.add_images(f"{kind}/{name}", arr, int(step), dataformats="NHWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()
        if self._jsonl is not None:
            self._jsonl.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def read_jsonl(workdir: str | os.PathLike, kind: str | None = "train") -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` (only those of ``kind`` unless ``None``)."""
    path = pathlib.Path(workdir) / JSONL_NAME
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


def _events(logdir: str | os.PathLike) -> Iterator[Any]:
    """Every ``Event`` proto of the event files under ``logdir`` (file order, then record order).

    A small TFRecord reader (length, crc, payload, crc) over ``tensorboardX``'s ``Event`` proto, so that tests
    and scripts can check event files without TensorFlow or TensorBoard.
    """
    from tensorboardX.proto import event_pb2  # noqa: PLC0415

    for path in sorted(pathlib.Path(logdir).rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            payload = data[pos + 12: pos + 12 + length]
            pos += 12 + length + 4
            if len(payload) < length:
                break
            yield event_pb2.Event.FromString(payload)


def read_tensorboard_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Reads every scalar of the event files under ``logdir``: ``{tag: [(step, value), ...]}``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for event in _events(logdir):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return out


def read_tensorboard_images(logdir: str | os.PathLike) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Reads every image summary under ``logdir``: ``{tag: [(step, (H, W, C) uint8), ...]}`` (PNG decoded)."""
    from PIL import Image  # noqa: PLC0415

    out: dict[str, list[tuple[int, np.ndarray]]] = {}
    for event in _events(logdir):
        for value in event.summary.value:
            if value.HasField("image"):
                pixels = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)))
                out.setdefault(value.tag, []).append((int(event.step), pixels.reshape(pixels.shape[:2] + (-1,))))
    return out


def progress_enabled(mode: str, stream: TextIO) -> bool:
    """Whether to draw a progress bar: ``mode`` "on", "off" or "auto" (only when ``stream`` is a terminal)."""
    if mode not in PROGRESS_MODES:
        raise ValueError(f"train.progress_bar must be one of {PROGRESS_MODES}, got {mode!r}")
    if mode == "auto":
        isatty = getattr(stream, "isatty", None)
        return bool(isatty and isatty())
    return mode == "on"


class _NoBar:
    """The progress bar's stand-in when it is off: every method does nothing."""

    def update(self, n: int = 1) -> None:  # noqa: ARG002
        return None

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:  # noqa: ARG002
        return None

    def close(self) -> None:
        return None


def progress_bar(*, total: int, initial: int, mode: str = "auto", enabled: bool = True,
                 stream: Optional[TextIO] = None) -> Any:
    """A tqdm bar over train steps ``initial .. total`` (steps/s, ETA) on ``stream`` (default: the current
    ``sys.stderr``), or a do-nothing stand-in when ``enabled`` is false (processes other than 0) or
    :func:`progress_enabled` says no."""
    stream = sys.stderr if stream is None else stream
    if not (enabled and progress_enabled(mode, stream)):
        return _NoBar()
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=total, initial=initial, unit="step", file=stream, dynamic_ncols=True, smoothing=0.1,
                leave=True)


def print_above(bar: Any, print_fn: Optional[Callable[..., Any]]) -> Optional[Callable[..., Any]]:
    """``print_fn`` that clears ``bar`` before a line and redraws it after (``print_fn`` itself without a bar)."""
    if print_fn is None or isinstance(bar, _NoBar):
        return print_fn

    def write(*args: Any, **kwargs: Any) -> None:
        with bar.external_write_mode(file=bar.fp):
            print_fn(*args, **kwargs)

    return write
