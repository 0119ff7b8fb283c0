"""Config files: loading them from Python, and finding a package's presets by name.

The CLIs take ``--config`` as a preset name (``sr_x4``, ``sr_x4:embedded``, resolved in the package's folder under
``configs/`` and its subfolders by :func:`resolve_config`) or as a path (``configs/deqir/sr_x4.py[:arg]``);
:mod:`ircore.config_cli` turns that into the flag. Every problem with a config file is one :class:`ConfigError` line.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import pathlib
import traceback

import ml_collections

CONFIGS_ROOT = pathlib.Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A config file or preset name that cannot be used (one line, naming the fix)."""


class ConfigFileMissing(ConfigError, FileNotFoundError):
    """A config path that is no file."""


class ArgumentRefused(ConfigError):
    """``get_config(arg)`` refused ``arg``; ``reason`` is the config's own message (its accepted values)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def split_arg(value: str) -> tuple[str, str | None]:
    """``"dir/file.py:arg"`` -> ``("dir/file.py", "arg")``; the colon counts only in the last path component."""
    head, sep, name = value.rpartition("/")
    name, colon, arg = name.partition(":")
    return head + sep + name, (arg if colon else None)


def _where(err: BaseException, file: pathlib.Path) -> str:
    """``:LINE`` of the innermost frame of ``err`` inside ``file`` (empty if none)."""
    if isinstance(err, SyntaxError) and err.lineno and err.filename and pathlib.Path(err.filename) == file:
        return f":{err.lineno}"
    lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if pathlib.Path(f.filename) == file]
    return f":{lines[-1]}" if lines else ""


def _one_line(err: BaseException) -> str:
    if isinstance(err, SyntaxError):
        text = err.msg
    elif isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    else:
        text = str(err)
    return " ".join(text.split()) or type(err).__name__


def load_config_file(path: str | os.PathLike, arg: str | None = None) -> ml_collections.ConfigDict:
    """Runs ``get_config()`` (or ``get_config(arg)``) of a config file given by path.

    ``"file.py:arg"`` is accepted too, as on the command line. Raises :class:`ConfigFileMissing` for no file and
    :class:`ConfigError` for a file that does not run, has no ``get_config``, or refuses ``arg`` (the message then
    carries the config's own list of accepted arguments).
    """
    path = os.fspath(path)
    if arg is None:
        path, arg = split_arg(path)
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigFileMissing(f"config file {file} does not exist")
    file = file.resolve()
    spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - a user's file: report where it broke, on one line
        kind = "has a syntax error" if isinstance(err, SyntaxError) else f"failed to load ({type(err).__name__})"
        raise ConfigError(f"config file {file}{_where(err, file)} {kind}: {_one_line(err)}; fix the file") from err
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {file} defines no get_config(); a config file needs "
                          "def get_config() returning an ml_collections.ConfigDict")
    try:
        return module.get_config() if arg is None else module.get_config(arg)
    except ArgumentRefused as err:  # refused by a config this one builds on: name this one
        if arg is None:
            raise
        raise ArgumentRefused(f"config {file.stem} rejects ':{arg}': {err.reason}", err.reason) from err
    except ConfigError:
        raise
    except TypeError as err:
        if arg is not None and "get_config()" in str(err) and "positional argument" in str(err):
            raise ConfigError(f"config {file.stem} takes no argument: drop ':{arg}'") from err
        raise ConfigError(f"config file {file}{_where(err, file)}: get_config failed: {_one_line(err)}") from err
    except (ValueError, KeyError) as err:
        if arg is None:
            raise ConfigError(f"config file {file}{_where(err, file)}: get_config failed: {_one_line(err)}") from err
        raise ArgumentRefused(f"config {file.stem} rejects ':{arg}': {_one_line(err)}", _one_line(err)) from err
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"config file {file}{_where(err, file)}: get_config failed "
                          f"({type(err).__name__}): {_one_line(err)}") from err


def sibling_config(this_file: str, relative: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Loads another config file named relative to ``this_file`` (for presets built on model configs)."""
    return load_config_file(pathlib.Path(this_file).parent / relative, arg)


def preset_dirs(module: str, root: pathlib.Path = CONFIGS_ROOT) -> tuple[pathlib.Path, ...]:
    """The folders searched for the presets of the package of ``module`` (``deqir_jax.sample`` ->
    ``configs/deqir`` and its subfolders, ``configs/deqir/models``), first match wins."""
    top = root / module.split(".")[0].removesuffix("_jax")
    subs = sorted(p for p in top.iterdir() if p.is_dir() and p.name[0] not in "_.") if top.is_dir() else []
    return (top, *subs)


def preset_names(dirs: tuple[pathlib.Path, ...]) -> list[str]:
    """Names of the config files in ``dirs`` (without ``.py``), in search order, duplicates dropped."""
    names = [p.stem for d in dirs if d.is_dir() for p in sorted(d.glob("*.py")) if not p.name.startswith("_")]
    return list(dict.fromkeys(names))


def closest(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``candidates`` closest to ``name`` (difflib), best first."""
    return difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)


def is_preset_name(value: str) -> bool:
    """True for a bare name (``sr_x4``, ``models/celeba_hq``); False for a path to a ``.py`` file."""
    path, _ = split_arg(value)
    return not path.endswith(".py") and not os.path.isabs(path) and not path.startswith(".")


def resolve_config(value: str, dirs: tuple[pathlib.Path, ...]) -> str:
    """``--config`` value -> ``path[:arg]`` for ml_collections: an existing file stays as given, a preset name
    (no ``.py``) becomes ``<dir>/<name>.py[:arg]`` for the first of ``dirs`` holding it. Raises
    :class:`ConfigError` naming the closest presets for an unknown name, :class:`ConfigFileMissing` for a path
    that is no file."""
    path, arg = split_arg(value)
    suffix = f":{arg}" if arg is not None else ""
    if not path:
        raise ConfigError("--config is empty: pass a preset name (e.g. --config sr_x4) or a config file path")
    if os.path.isfile(path):
        return value
    if os.path.isdir(path):
        inside = preset_names((pathlib.Path(path),))
        tip = f" (e.g. --config {inside[0]})" if inside and pathlib.Path(path).resolve() in dirs else ""
        raise ConfigError(f"{path} is a folder: pass a preset name{tip} or the path of one config file in it")
    if not is_preset_name(value):
        names = preset_names(dirs)
        hint = closest(pathlib.Path(path).stem, names)
        tip = f"; did you mean --config {hint[0]}{suffix}?" if hint else ""
        raise ConfigFileMissing(f"config file {path} does not exist{tip}")
    for folder in dirs:
        candidate = folder / f"{path}.py"
        if candidate.is_file():
            return f"{candidate}{suffix}"
    names = preset_names(dirs)
    if not names:
        raise ConfigError(f"no preset {path!r}: the configs folder {dirs[0] if dirs else CONFIGS_ROOT} is not here "
                          "(package installed without its repository); pass a config file path to --config")
    hint = closest(path, names)
    tip = (f"did you mean {', '.join(hint)}?" if hint else f"presets: {', '.join(names)}")
    raise ConfigError(f"unknown preset {path!r} ({tip}); pass a preset name from "
                      f"{', '.join(str(d) for d in dirs)} or a config file path")


def field_paths(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted field path of ``cfg`` (sections and leaves)."""
    paths = []
    for key in cfg.keys():
        paths.append(prefix + key)
        if isinstance(cfg[key], (ml_collections.ConfigDict, dict)):
            paths += field_paths(cfg[key], f"{prefix}{key}.")
    return paths


def check_override_paths(cfg: ml_collections.ConfigDict, paths: list[str]) -> None:
    """Raises :class:`ConfigError` for the first ``--config.<path>`` whose field ``cfg`` lacks, with the closest
    existing names (a locked config refuses new fields)."""
    for dotted in paths:
        node, walked = cfg, []
        for part in dotted.split("."):
            if "[" in part:  # indexing into a sequence: left to ml_collections
                break
            if not isinstance(node, (ml_collections.ConfigDict, dict)):
                raise ConfigError(f"--config.{'.'.join(walked)} is a field of type {type(node).__name__}, "
                                  f"not a section: --config.{dotted} does not exist")
            keys = list(node.keys())
            if part not in keys:
                prefix = "".join(f"{w}." for w in walked)
                elsewhere = [p for p in field_paths(cfg) if p.rsplit(".", 1)[-1] == part]  # right name, other section
                hint = list(dict.fromkeys(elsewhere + [prefix + h for h in closest(part, keys)]))[:3]
                tip = (f"did you mean {', '.join('--config.' + h for h in hint)}?" if hint
                       else f"fields{' of --config.' + prefix[:-1] if prefix else ''}: {', '.join(sorted(keys))}")
                raise ConfigError(f"unknown config field --config.{dotted} ({tip})")
            node = node[part]
            walked.append(part)
