"""The command line every ``python -m <package>.convert`` shares: released checkpoint -> orbax folder.

    python -m deqir_jax.convert --src FILE --config CONFIG.py --out DIR [--overwrite] [package flags]

A package passes its library converter ``convert(src, config, out, *, overwrite, **extra) -> params`` and,
optionally, its extra flags (``extra_flags(flags) -> (FLAGS -> keyword arguments)``). User mistakes (missing
file, existing output, a checkpoint that does not fit the config) end as one line on stderr and exit code 1.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional

from ircore.layers import count_params

ConvertFn = Callable[..., Any]


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
    flags.DEFINE_bool("overwrite", False, "replace an existing checkpoint at --out")
    config_cli.define_config_flag(prog, help_string=f"{config_help}: a preset name or a file path", argv=argv)
    extra_kwargs = extra_flags(flags) if extra_flags is not None else (lambda _: {})

    def run(_):
        FLAGS = flags.FLAGS
        if FLAGS.config is None:
            raise app.UsageError("--config is required")
        try:
            params = convert(FLAGS.src, FLAGS.config, FLAGS.out, overwrite=FLAGS.overwrite, **extra_kwargs(FLAGS))
        except (FileNotFoundError, FileExistsError, ValueError, ImportError) as err:  # ConversionError: ValueError
            print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
            sys.exit(1)
        print(f"wrote {count_params(params):,} parameters to {FLAGS.out}")

    app.run(run, argv=argv, flags_parser=config_cli.flags_parser(prog))
