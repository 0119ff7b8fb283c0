"""JAX's persistent compilation cache for the command lines: a second run skips XLA compilation.

``enable(setting)`` with ``setting`` ``"auto"`` (a per-user folder: ``$IRDIFF_COMPILATION_CACHE``, else
``$XDG_CACHE_HOME/ir-diffusion-jax/jax`` or ``~/.cache/ir-diffusion-jax/jax``), a folder path, or ``""`` /
``"off"`` (no cache). Programs compiled in under ``min_compile_seconds`` are not stored. This sets process-wide JAX
options, so only command lines call it (before their first ``jit``); library functions never do.
"""
from __future__ import annotations

import os
import pathlib

import jax

ENV_VAR = "IRDIFF_COMPILATION_CACHE"
OFF = ("", "off", "none")


def default_folder() -> pathlib.Path:
    """The per-user cache folder used by ``"auto"``."""
    if os.environ.get(ENV_VAR):
        return pathlib.Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base).expanduser() / "ir-diffusion-jax" / "jax"


def enable(setting: str = "auto", *, min_compile_seconds: float = 1.0) -> pathlib.Path | None:
    """Turns the persistent compilation cache on (returns its folder) or leaves it off (returns ``None``).

    A folder that cannot be created or written is a one-line ``ValueError`` naming the folder and the fix.
    """
    setting = str(setting).strip()
    if setting.lower() in OFF:
        return None
    folder = default_folder() if setting.lower() == "auto" else pathlib.Path(setting).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"compilation cache folder {folder} is not writable ({err.strerror}); pass another "
                         f"folder or 'off' (--config.compilation_cache=off)") from None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
