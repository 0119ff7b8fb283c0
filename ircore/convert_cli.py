"""The command line every ``python -m <package>.convert`` shares: released checkpoint -> orbax folder.

    python -m deqir_jax.convert --src FILE --config CONFIG.py --out DIR [--overwrite] [package flags]

A package passes its library converter ``convert(src, config, out, *, overwrite, **extra) -> params`` and,
optionally, its extra flags (``extra_flags(flags) -> (FLAGS -> keyword arguments)``). User mistakes (missing
or damaged file, an output that is a file, read-only, holds files this program did not write or exists without
``--overwrite``, a checkpoint that does not fit the config or belongs to the other package) end as one line on
stderr and exit code 1; the output checks run before the checkpoint is read. A successful run prints one
summary line: absl / orbax INFO logging is silenced unless ``--verbosity`` is given.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional

from ircore.layers import count_params

ConvertFn = Callable[..., Any]


def shorten(message: str, keep: int = 8) -> str:
    """``message`` on one line, each long list of names (``"N things: a, b, c, ..."`` parts separated by
    ``" | "``, as :class:`ircore.torch_convert.ConversionError` writes them) cut to its first ``keep`` names."""
    parts = []
    for part in " ".join(message.split()).split(" | "):
        head, sep, body = part.partition(": ")
        separator = "; " if body.count("; ") > body.count(", ") else ", "
        items = body.split(separator)
        if sep and len(items) > keep:
            body = separator.join(items[:keep]) + f"{separator}... ({len(items) - keep} more)"
        parts.append(head + sep + body)
    return " | ".join(parts)


def quiet_logging(FLAGS: Any) -> None:
    """absl (and through it python ``logging``: orbax, jax) at WARNING, unless the user passed ``--verbosity``."""
    from absl import logging  # noqa: PLC0415 - CLI only

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def convert_main(
    prog: str,
    convert: ConvertFn,
    *,
    config_help: str,
    extra_flags: Optional[Callable[[Any], Callable[[Any], dict]]] = None,
    argv: Optional[list[str]] = None,
) -> None:
    """Defines ``--src --out --overwrite --config`` (+ extras) and runs ``convert`` on them."""
    from absl import app, flags  # noqa: PLC0415 - CLI only
    from ircore import config_cli  # noqa: PLC0415

    flags.DEFINE_string("src", None, "released checkpoint (.pt/.pth/.ckpt/.npz)", required=True)
    flags.DEFINE_string("out", None, "output directory for the orbax checkpoint", required=True)
    flags.DEFINE_bool("overwrite", False, "replace a checkpoint this program wrote earlier at --out (a folder "
                      "holding anything else is never replaced)")
    config_cli.define_config_flag(prog, help_string=f"{config_help}: a preset name or a file path", argv=argv)
    extra_kwargs = extra_flags(flags) if extra_flags is not None else (lambda _: {})

    def run(_):
        FLAGS = flags.FLAGS
        quiet_logging(FLAGS)
        if FLAGS.config is None:
            print(f"{prog}: error: --config is required: pass --config=FILE, the {config_help}", file=sys.stderr)
            sys.exit(1)
        try:
            params = convert(FLAGS.src, FLAGS.config, FLAGS.out, overwrite=FLAGS.overwrite, **extra_kwargs(FLAGS))
        except (OSError, ValueError, ImportError) as err:  # ConversionError: ValueError; PermissionError: OSError
            print(f"{prog}: error: {shorten(str(err))}", file=sys.stderr)
            sys.exit(1)
        print(f"wrote {count_params(params):,} parameters to {FLAGS.out}")

    app.run(run, argv=argv, flags_parser=config_cli.flags_parser(prog))
