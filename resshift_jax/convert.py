"""Convert released ResShift weights (UNet or VQ autoencoder ``.pth``) into orbax checkpoints.

A model needs two conversions, one per network::

    python -m resshift_jax.convert --src weights/resshift_realsrx4_s4_v3.pth \
        --config configs/resshift/realsr_x4_v3.py --out checkpoints/realsr_x4_v3/unet
    python -m resshift_jax.convert --src weights/autoencoder_vq_f4.pth \
        --config configs/resshift/realsr_x4_v3.py --out checkpoints/realsr_x4_v3/autoencoder

``--part unet|autoencoder`` picks the network; by default (``auto``) it is recognised from the checkpoint's
keys. The sampler then finds them with ``--config.unet_checkpoint=checkpoints/realsr_x4_v3/unet
--config.autoencoder_checkpoint=checkpoints/realsr_x4_v3/autoencoder`` (see ``resshift_jax.sample``).

The mapping is strict (:mod:`resshift_jax.convert_keys`): every unused checkpoint key, every
missing parameter and every shape mismatch is reported; stored Swin buffers are checked against the
recomputed ones. :func:`convert_checkpoint` does the same from Python.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import ml_collections
import numpy as np

from ircore import checkpoint_kinds, checkpoints, convert_cli, convert_source, torch_convert
from resshift_jax import convert_keys

PARTS = ("unet", "autoencoder")
PACKAGE = "resshift_jax"
EXPECTED = "a ResShift UNet or VQ autoencoder"


def detect_part(state: Mapping[str, Any]) -> str:
    """``"unet"`` or ``"autoencoder"`` from the state-dict names (UNet: ``input_blocks.*``; VQ: ``encoder.*``)."""
    names = {torch_convert.strip_prefix(k).split(".", 1)[0] for k in state}
    is_unet = "input_blocks" in names and "out" in names
    is_vq = "encoder" in names and "decoder" in names
    if is_unet == is_vq:
        sample = ", ".join(sorted(names)[:8])
        raise ValueError(f"cannot tell whether the checkpoint is a UNet or an autoencoder (top-level names: "
                         f"{sample}); pass --part unet or --part autoencoder")
    return "unet" if is_unet else "autoencoder"


def section(config: ml_collections.ConfigDict, part: str) -> ml_collections.ConfigDict:
    """The config section that describes ``part`` (``config.model`` or ``config.autoencoder``)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    name = "model" if part == "unet" else "autoencoder"
    if name not in config:
        raise ValueError(f"config has no {name!r} section (needed to convert the {part})")
    return config[name]


def convert_part_state_dict(state: Mapping[str, np.ndarray], config: ml_collections.ConfigDict, part: str) -> dict:
    """State dict -> Flax params of the UNet (``config.model``) or the VQ autoencoder (``config.autoencoder``)."""
    if part == "unet":
        return convert_keys.convert_unet_state_dict(state, section(config, part))
    return convert_keys.convert_vq_state_dict(state, section(config, part))


_PART_OF_KIND = {checkpoint_kinds.RESSHIFT_UNET: "unet", checkpoint_kinds.RESSHIFT_VQ: "autoencoder"}


def _foreign(src: str | os.PathLike, state: Mapping[str, Any], part: str = "auto"
             ) -> torch_convert.ConversionError | None:
    """A clearer error than the key lists when ``state`` holds another package's weights ("did you mean
    deqir_jax.convert") or the other ResShift network than ``part`` ("pass --part ..."), else None."""
    hint = checkpoint_kinds.wrong_package(src, state, PACKAGE, EXPECTED)
    kind = checkpoint_kinds.guess_kind(state)
    if hint is None and part in PARTS and _PART_OF_KIND.get(kind, part) != part:
        hint = (f"{os.fspath(src)} looks like {kind.name} checkpoint, but --part {part} was given; pass "
                f"--part {_PART_OF_KIND[kind]} or leave --part out")
    return None if hint is None else torch_convert.ConversionError(hint)


def convert_checkpoint(
    src: str | os.PathLike,
    config: ml_collections.ConfigDict,
    out: str | os.PathLike | None = None,
    *,
    part: str = "auto",
    overwrite: bool = False,
) -> dict:
    """Reads ``src`` (``.pth``/``.pt``/``.ckpt``/``.npz``), maps it strictly onto the UNet or the autoencoder of
    ``config`` and, if ``out`` is given, saves it with :func:`ircore.checkpoints.save_params`.

    ``part``: ``"unet"``, ``"autoencoder"`` or ``"auto"`` (recognised from the keys). The metadata records the
    source file, the part, the config name and the network's config section. Returns the parameter tree
    (numpy float32). ``out`` is checked before ``src`` is read (:func:`ircore.checkpoints.check_target`).
    Raises ``ConversionError`` for any key / shape / non-finite problem (naming the right converter when
    ``src`` holds DeqIR weights), ``FileExistsError`` if ``out`` exists and ``overwrite`` is False or if it
    holds files this program did not write.
    """
    if part != "auto" and part not in PARTS:
        raise ValueError(f"part must be 'auto' or one of {PARTS}, got {part!r}")
    if isinstance(config.get("model"), ml_collections.ConfigDict) and "arch" in config.model:
        raise ValueError("the config has model.arch, so it is a DeqIR model config, not a ResShift one: pass one "
                         "of configs/resshift/*.py as --config")
    state = convert_source.read_checked(src, out, overwrite=overwrite)
    try:
        if part == "auto":
            part = detect_part(state)
        params = convert_part_state_dict(state, config, part)
    except torch_convert.ConversionError as err:
        raise _foreign(src, state, part) or err from None
    except ValueError as err:  # detect_part: neither a UNet nor an autoencoder
        if "cannot tell" not in str(err):
            raise
        raise _foreign(src, state) or err from None
    if out is not None:
        metadata = {
            "source": os.fspath(src),
            "part": part,
            "config_name": config.get("name", ""),
            part: section(config, part).to_dict(),
        }
        checkpoints.save_params(out, params, metadata=metadata, overwrite=overwrite)
    return params


def _part_flag(flags: Any) -> Any:
    flags.DEFINE_enum("part", "auto", ("auto",) + PARTS, "which network the checkpoint holds")
    return lambda FLAGS: {"part": FLAGS.part}


def main(argv: list[str] | None = None) -> None:
    convert_cli.convert_main("resshift_jax.convert", convert_checkpoint, extra_flags=_part_flag,
                             config_help="ResShift config file (configs/resshift/*.py)", argv=argv)


if __name__ == "__main__":
    main()
