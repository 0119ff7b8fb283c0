"""The ``--config`` flag every CLI shares: a preset name or a config file path, plus ``--config.<field>=value``.

    config_cli.define_config_flag("deqir_jax.sample", default=..., help_string=..., argv=argv)
    app.run(run, argv=argv, flags_parser=config_cli.flags_parser("deqir_jax.sample"))

``--config sr_x4:embedded`` is looked up in the package's folder under ``configs/`` (and its subfolders) from any
working directory (:func:`ircore.config_utils.resolve_config`); a path works as before. The chosen config is loaded
and its overrides checked before ml_collections sees them, so a missing or misspelt preset, a refused argument, a
broken file, an unknown field or a value of the wrong type is one line on stderr (``<prog>: error: ...``), exit 1.
"""
from __future__ import annotations

import re
import sys
from typing import Any, Callable, NoReturn, Optional

from ircore import config_utils
from ircore.config_utils import ConfigError


def module_name(fn: Callable) -> str:
    """The dotted module name of ``fn``, also when its module runs as ``python -m package.module``."""
    if fn.__module__ == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        return spec.name if spec is not None else "__main__"
    return fn.__module__


def _value_pattern(name: str) -> re.Pattern:
    return re.compile(rf"^--?{re.escape(name)}(=|$)")


def override_paths(argv: list[str], name: str = "config") -> list[str]:
    """The dotted field paths of the ``--<name>.<path>[=value]`` arguments (``--no<name>.flag`` too)."""
    pattern = re.compile(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)")
    return [m.group(1) for m in map(pattern.match, argv) if m]


def config_value(argv: list[str], name: str = "config") -> Optional[str]:
    """The value of the last ``--<name> VALUE`` / ``--<name>=VALUE`` in ``argv[1:]`` (None if absent)."""
    pattern, value = _value_pattern(name), None
    for i, arg in enumerate(argv[1:], 1):
        m = pattern.match(arg)
        if m and m.group(1):
            value = arg.split("=", 1)[1]
        elif m:
            value = argv[i + 1] if i + 1 < len(argv) else value
    return value


def with_resolved_config(argv: list[str], module: str, name: str = "config") -> list[str]:
    """A copy of ``argv`` with every ``--<name>`` value resolved to ``path[:arg]`` (preset names -> files)."""
    dirs, pattern, out = config_utils.preset_dirs(module), _value_pattern(name), list(argv)
    for i, arg in enumerate(out[1:], 1):
        m = pattern.match(arg)
        if m and m.group(1):
            out[i] = f"{arg.split('=', 1)[0]}={config_utils.resolve_config(arg.split('=', 1)[1], dirs)}"
        elif m and i + 1 < len(out):
            out[i + 1] = config_utils.resolve_config(out[i + 1], dirs)
    return out


def check_config(value: str, module: str, argv: list[str], name: str = "config") -> None:
    """Resolves and loads the config ``value`` and checks the ``--<name>.<field>`` overrides of ``argv`` against
    it; raises :class:`ircore.config_utils.ConfigError` (one line) for any problem."""
    cfg = config_utils.load_config_file(config_utils.resolve_config(value, config_utils.preset_dirs(module)))
    if cfg is None or not hasattr(cfg, "keys"):
        raise ConfigError(f"config {value}: get_config() returned {type(cfg).__name__}, not a ConfigDict")
    config_utils.check_override_paths(cfg, override_paths(argv, name))


def fail(prog: str, message: str, code: int = 1) -> NoReturn:
    """Prints ``<prog>: error: <message>`` as one line on stderr and exits with ``code``."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(code)


def define_config_flag(prog: str, *, default: Optional[str] = None, help_string: str,
                       argv: Optional[list[str]] = None, lock_config: bool = True, name: str = "config",
                       flag_values: Any = None) -> Any:
    """Defines the (locked) ``--<name>`` config flag of the CLI ``prog`` (``"<package>.<command>"``, whose package
    names the preset folder) after checking the config that will be used (given, else ``default``) with its
    overrides; exits with one line on a problem. Returns the flag holder (in ``flag_values``, default
    ``absl.flags.FLAGS``)."""
    from absl import flags  # noqa: PLC0415 - CLI only
    from ml_collections import config_flags  # noqa: PLC0415

    argv = sys.argv if argv is None else argv
    dirs = config_utils.preset_dirs(prog)
    given = config_value(argv, name)
    try:
        default = config_utils.resolve_config(default, dirs) if default is not None else None
    except ConfigError:
        if given is None:
            raise
    try:
        if given is not None or default is not None:
            check_config(given if given is not None else default, prog, argv, name)
    except ConfigError as err:
        fail(prog, str(err))
    try:  # without --config in argv, the default and its overrides are parsed here
        return config_flags.DEFINE_config_file(name, default, help_string, lock_config=lock_config, sys_argv=argv,
                                               flag_values=flags.FLAGS if flag_values is None else flag_values)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as err:
        fail(prog, _flag_error(err, name, prog=prog))


def flags_parser(prog: str, *, required: bool = True, name: str = "config",
                 flag_values: Any = None) -> Callable[[list[str]], list[str]]:
    """The ``flags_parser`` for ``absl.app.run``: resolves preset names, parses the flags and turns every flag
    error (an override value of the wrong type, an unknown flag, a missing required flag, no config, a stray
    positional argument) into one line, exit 1."""

    def parse(args: list[str]) -> list[str]:
        from absl import flags  # noqa: PLC0415

        values = flags.FLAGS if flag_values is None else flag_values
        try:
            rest = values(with_resolved_config(args, prog, name))
        except ConfigError as err:
            fail(prog, str(err))
        except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as err:  # ml_collections' too
            fail(prog, _flag_error(err, name, values[name].value if name in values else None, prog))
        if required and values[name].value is None:
            fail(prog, no_config_message(prog, name))
        if len(rest) > 1:  # e.g. "--config.timesteps 50": the value went astray
            fail(prog, f"unexpected argument(s) {' '.join(rest[1:])}: write --{name}.FIELD=VALUE, with '='")
        return rest

    return parse


def no_config_message(prog: str, name: str = "config") -> str:
    """The message for a CLI run without ``--<name>`` (and no default), listing the package's presets."""
    names = config_utils.preset_names(config_utils.preset_dirs(prog))
    listed = f" (presets: {', '.join(names)})" if names else ""
    return f"no --{name} given: pass a preset name or a config file path{listed}"


def _field(cfg: Any, dotted: str) -> Any:
    """The value at ``dotted`` in ``cfg`` (None if absent)."""
    for part in dotted.split("."):
        try:
            cfg = cfg[part]
        except (KeyError, TypeError, IndexError):
            return None
    return cfg


def _flag_error(err: BaseException, name: str, cfg: Any = None, prog: str = "") -> str:
    """One line for an absl / ml_collections flag error, with the expected type for an override of the wrong
    type (``cfg``: the parsed config)."""
    text = " ".join(str(err).split())
    if re.match(rf"Found --(no)?{re.escape(name)}\..* in argv before a value for --{re.escape(name)}", text):
        return f"{text}: put --{name} first, then its --{name}.<field> overrides"
    unsupported = re.match(rf"Type <class '(\w+)'> of field ({re.escape(name)}\.\S+) is not supported", text)
    if unsupported:
        held = "None" if unsupported.group(1) == "NoneType" else f"a {unsupported.group(1)} value"
        return (f"--{unsupported.group(2)} holds {held}, which cannot be set on the command "
                f"line: copy the config file, edit the field there and pass the copy to --{name}")
    required = re.match(r"flag --(\w+)=None: Flag --\w+ must have a value other than None", text)
    if required and required.group(1) == name:
        return no_config_message(prog, name)
    if required:
        return f"--{required.group(1)} is required"
    m = re.match(rf"flag --({re.escape(name)}\.[^=]+)=(.*?): (.*)", text)
    if m:
        current = _field(cfg, m.group(1).split(".", 1)[1])
        if current is None:
            return f"--{m.group(1)}={m.group(2)}: {m.group(3)}"
        detail = "" if isinstance(current, bool) else f" ({m.group(3)})"
        return (f"--{m.group(1)}={m.group(2)}: not a valid {type(current).__name__}{detail}; "
                f"the field holds {type(current).__name__} values, e.g. --{m.group(1)}={current}")
    return text
