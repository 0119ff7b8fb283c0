"""Convert a released DeqIR prior (guided-diffusion ``.pt`` or CelebA-HQ ``.ckpt``) into an orbax checkpoint.

    python -m deqir_jax.convert --src 256x256_diffusion_uncond.pt \
        --config configs/deqir/models/imagenet256_uncond.py --out checkpoints/imagenet256_uncond

The library function :func:`convert_checkpoint` does the same from Python; the tests load the reference
fixtures through it.
"""
from __future__ import annotations

import os
import ml_collections

from ircore import checkpoints, convert_cli, torch_convert
from deqir_jax.convert_keys import convert_prior_state_dict


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
    params = convert_prior_state_dict(state, config.model)
    if out is not None:
        checkpoints.save_params(
            out,
            params,
            metadata={"source": os.fspath(src), "model": config.model.to_dict()},
            overwrite=overwrite,
        )
    return params


def main(argv: list[str] | None = None) -> None:
    convert_cli.convert_main("deqir_jax.convert", convert_checkpoint,
                             config_help="model config file (configs/deqir/models/*.py)", argv=argv)


if __name__ == "__main__":
    main()
