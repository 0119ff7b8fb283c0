"""Convert a released DeqIR prior (guided-diffusion ``.pt`` or CelebA-HQ ``.ckpt``) into an orbax checkpoint.

    python -m deqir_jax.convert --src 256x256_diffusion_uncond.pt \
        --config configs/deqir/models/imagenet256_uncond.py --out checkpoints/imagenet256_uncond

The library function :func:`convert_checkpoint` does the same from Python; the tests load the reference
fixtures through it.
"""
from __future__ import annotations

import os
import ml_collections

from ircore import checkpoint_kinds, checkpoints, convert_cli, convert_source, torch_convert
from deqir_jax.convert_keys import convert_prior_state_dict

PACKAGE = "deqir_jax"
EXPECTED = "a DeqIR prior (guided-diffusion UNet or DDPM)"


def convert_checkpoint(
    src: str | os.PathLike,
    config: ml_collections.ConfigDict,
    out: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
) -> dict:
    """Reads ``src``, maps it strictly onto ``config.model`` and (if ``out`` is given) saves it with orbax.

    Returns the Flax parameter tree (numpy float32 arrays). ``out`` is checked before ``src`` is read
    (:func:`ircore.checkpoints.check_target`: never a folder holding files this program did not write, never
    one containing ``src``). Raises ``ConversionError`` naming every unused checkpoint key, every missing
    parameter, every shape mismatch and every non-finite tensor, or, for another package's weights, which
    converter to use instead.
    """
    if not isinstance(config.get("model"), ml_collections.ConfigDict) or "arch" not in config.model:
        raise ValueError("the config has no model.arch, so it is not a DeqIR model config: pass one of "
                         "configs/deqir/models/*.py as --config")
    state = convert_source.read_checked(src, out, overwrite=overwrite)
    try:
        params = convert_prior_state_dict(state, config.model)
    except torch_convert.ConversionError:
        hint = checkpoint_kinds.wrong_package(src, state, PACKAGE, EXPECTED)
        if hint is None:
            raise
        raise torch_convert.ConversionError(hint) from None
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
