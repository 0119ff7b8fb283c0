"""Convert a released DeqIR prior (guided-diffusion ``.pt`` or CelebA-HQ ``.ckpt``) into an orbax checkpoint.

    python -m deqir_jax.convert --src 256x256_diffusion_uncond.pt \
        --config configs/deqir/models/imagenet256_uncond.py --out checkpoints/imagenet256_uncond

The library function :func:`convert_checkpoint` does the same from Python; the tests load the reference
fixtures through it.
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from ircore import checkpoints, torch_convert
from deqir_jax import models


def convert_checkpoint(
    src: str | os.PathLike,
    config: ml_collections.ConfigDict,
    out: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
) -> dict:
    """Reads ``src``, maps it strictly onto ``config.model`` and (if ``out`` is given) saves it with orbax.

    Returns the Flax parameter tree (numpy float32 arrays). Raises ``ConversionError`` naming every
    unused checkpoint key, every missing parameter and every shape mismatch.
    """
    state = torch_convert.load_torch_state_dict(src)
    params = models.convert_torch_state_dict(state, config.model)
    if out is not None:
        checkpoints.save_params(
            out,
            params,
            metadata={"source": os.fspath(src), "model": config.model.to_dict()},
            overwrite=overwrite,
        )
    return params


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    import jax

    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)))


def main(argv: list[str] | None = None) -> None:
    from absl import app, flags
    from ml_collections import config_flags

    flags.DEFINE_string("src", None, "released checkpoint (.pt/.pth/.ckpt/.npz)", required=True)
    flags.DEFINE_string("out", None, "output directory for the orbax checkpoint", required=True)
    flags.DEFINE_bool("overwrite", False, "replace an existing checkpoint at --out")
    config_flags.DEFINE_config_file("config", None, "model config file (configs/deqir/models/*.py)")

    def run(_):
        cfg = flags.FLAGS.config
        if cfg is None:
            raise app.UsageError("--config is required")
        params = convert_checkpoint(flags.FLAGS.src, cfg, flags.FLAGS.out, overwrite=flags.FLAGS.overwrite)
        print(f"wrote {count_params(params):,} parameters to {flags.FLAGS.out}")

    app.run(run, argv=argv)


if __name__ == "__main__":
    main()
