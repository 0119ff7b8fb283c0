"""Reading a converter's source checkpoint (``--src``) with one-line errors for every way it can be wrong.

:func:`read_state_dict` checks the path first (missing, a folder, an unknown suffix, empty, unreadable) and
then reads it with :func:`ircore.torch_convert.load_torch_state_dict`, turning whatever torch or numpy raise
for a damaged or foreign file into a short :class:`~ircore.torch_convert.ConversionError`.
"""
from __future__ import annotations

import os
import pathlib
import zipfile

from ircore.torch_convert import ConversionError, StateDict, load_torch_state_dict

SUFFIXES = (".pt", ".pth", ".ckpt", ".npz")
_ACCEPTED = "a .pt, .pth, .ckpt (torch.save) or .npz (numpy.savez) file"


def check_source(src: str | os.PathLike) -> pathlib.Path:
    """Refuses a ``src`` that cannot be a checkpoint file; returns it as a path.

    Raises:
      FileNotFoundError: it does not exist.
      ValueError: a folder, an unknown suffix, an empty file, or not readable.
    """
    path = pathlib.Path(src).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--src {path} does not exist")
    if path.is_dir():
        raise ValueError(f"--src {path} is a folder; pass the checkpoint file itself ({_ACCEPTED})")
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"--src {path} has an unknown suffix {path.suffix or '(none)'!r}; it must be {_ACCEPTED}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"--src {path} is not readable (check its permissions)")
    if path.stat().st_size == 0:
        raise ValueError(f"--src {path} is empty (0 bytes): an interrupted download? fetch it again")
    return path


def _first_line(text: str, limit: int = 160) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit] + "..."


def read_state_dict(src: str | os.PathLike) -> StateDict:
    """``{name: array}`` of the checkpoint file ``src``, after :func:`check_source`.

    Raises:
      FileNotFoundError / ValueError: from :func:`check_source`.
      ConversionError: the file is damaged, truncated, not a checkpoint, or holds no tensors.
      ImportError: a torch file without PyTorch installed.
    """
    path = check_source(src)
    damaged = f"cannot read --src {path}: damaged, truncated or not {_ACCEPTED}"
    try:
        state = load_torch_state_dict(path)
    except ConversionError as err:
        if not str(err).startswith("cannot read checkpoint"):
            raise
        cause = err.__cause__
        if "weights only load failed" in str(cause).lower():  # torch's long weights_only explanation
            raise ConversionError(f"{damaged}; torch.load(weights_only=True) refused it: it is damaged or pickles "
                                  f"Python objects beyond tensors (save model.state_dict() instead)") from None
        detail = f"{type(cause).__name__}: {_first_line(str(cause))}" if cause is not None else _first_line(str(err))
        raise ConversionError(f"{damaged} ({detail})") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:  # numpy on a bad .npz
        raise ConversionError(f"{damaged} ({type(err).__name__}: {_first_line(str(err))})") from None
    if not state:
        raise ConversionError(f"--src {path} holds no tensors (a checkpoint of something else?)")
    return state


def read_checked(src: str | os.PathLike, out: str | os.PathLike | None, *, overwrite: bool) -> StateDict:
    """The state dict of ``src``, after checking ``src`` and the output folder ``out`` (None: no output) with
    :func:`ircore.checkpoints.check_target` -- every check before the (possibly large) file is read."""
    from ircore import checkpoints  # noqa: PLC0415 (orbax only when converting)

    check_source(src)
    if out is not None:
        checkpoints.check_target(out, overwrite=overwrite, protect=(src,))
    return read_state_dict(src)
