"""Recognising which model a released checkpoint holds, from its tensor names and a few shapes.

The converters of the two packages use it to turn "the checkpoint does not match the model" into a useful
hint when a user hands one package's converter the other package's weights (:func:`wrong_package`). The
rules only name families this repository converts; anything else is ``None`` and the converter's own
message stands.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

from ircore.torch_convert import strip_prefix


@dataclasses.dataclass(frozen=True)
class Kind:
    """A checkpoint family: ``name`` reads after "looks like"; ``package`` converts it."""

    name: str
    package: str


RESSHIFT_UNET = Kind("a ResShift UNet", "resshift_jax")
RESSHIFT_VQ = Kind("a ResShift VQ autoencoder", "resshift_jax")
GUIDED_DIFFUSION = Kind("a guided-diffusion UNet (a DeqIR prior)", "deqir_jax")
DDPM = Kind("a DDPM UNet (the DeqIR CelebA-HQ prior)", "deqir_jax")


def _in_channels(state: Mapping[str, Any], key: str) -> Optional[int]:
    shape = getattr(state.get(key), "shape", None)
    return int(shape[1]) if shape is not None and len(shape) == 4 else None


def guess_kind(state: Mapping[str, Any]) -> Optional[Kind]:
    """The family of the state dict ``state`` (``{name: array}``), or ``None`` when no rule fits.

    guided-diffusion-style UNets (``input_blocks``/``out``): ResShift's carry Swin buffers
    (``relative_position_*``), a ``feature_extractor`` or a low-quality input concatenated to the latent
    (more than 3 input channels); DeqIR's priors take a 3-channel image. VQ autoencoders have
    ``encoder``/``decoder``/``quantize``; the DDPM CelebA-HQ UNet has ``conv_in``/``down``/``mid``/``up``/``temb``.
    """
    names = {strip_prefix(k): v for k, v in state.items()}
    top = {k.split(".", 1)[0] for k in names}
    if {"input_blocks", "out"} <= top:
        swin = any("relative_position" in k for k in names)
        channels = _in_channels(names, "input_blocks.0.0.weight")
        if swin or "feature_extractor" in top or (channels is not None and channels > 3):
            return RESSHIFT_UNET
        return GUIDED_DIFFUSION if channels == 3 else None
    if {"encoder", "decoder"} <= top and ("quantize" in top or "quant_conv" in top):
        return RESSHIFT_VQ
    if {"conv_in", "down", "mid", "up", "temb"} <= top:
        return DDPM
    return None


def wrong_package(src: str | os.PathLike, state: Mapping[str, Any], package: str, expected: str) -> Optional[str]:
    """A one-line hint when ``state`` (read from ``src``) belongs to another package than ``package``, else None.

    ``expected`` names what ``package``'s converter takes (e.g. ``"a ResShift UNet or VQ autoencoder"``).
    """
    kind = guess_kind(state)
    if kind is None or kind.package == package:
        return None
    return (f"{os.fspath(src)} looks like {kind.name} checkpoint, not {expected}; "
            f"did you mean python -m {kind.package}.convert?")
