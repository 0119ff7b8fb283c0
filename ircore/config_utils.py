"""Loading ``ml_collections`` config files from Python (the CLIs use ``config_flags`` for the same files)."""
from __future__ import annotations

import importlib.util
import os
import pathlib

import ml_collections


def load_config_file(path: str | os.PathLike, arg: str | None = None) -> ml_collections.ConfigDict:
    """Runs ``get_config()`` (or ``get_config(arg)``) of a config file given by path.

    ``"file.py:arg"`` is accepted too, as on the command line.
    """
    path = os.fspath(path)
    if arg is None and ":" in pathlib.Path(path).name:
        path, arg = path.rsplit(":", 1)
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {file} does not exist")
    spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {file} defines no get_config()")
    return module.get_config() if arg is None else module.get_config(arg)


def sibling_config(this_file: str, relative: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Loads another config file named relative to ``this_file`` (for presets built on model configs)."""
    return load_config_file(pathlib.Path(this_file).parent / relative, arg)
