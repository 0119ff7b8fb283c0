"""Released PyTorch weights -> Flax parameter trees of DeqIR's priors: the state-dict key mappings
(:func:`adm_torch_key_to_path`, :func:`ddpm_torch_key_to_path`) and the strict converters
(:func:`convert_adm_state_dict`, :func:`convert_ddpm_state_dict`, and :func:`convert_prior_state_dict`, which
picks one by ``model_config.arch``), used by :mod:`deqir_jax.convert` (files and command line) and the tests.

The mapping is strict: every unused checkpoint key, every missing parameter and every shape mismatch is
reported (:class:`ircore.torch_convert.ConversionError`). The networks live in :mod:`deqir_jax.models`.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

import numpy as np

from deqir_jax import models
from deqir_jax.models import adm, ddpm
from ircore import torch_convert

# ----------------------------------------------------------------------------------------------- ADM (guided-diffusion)
_ADM_NORMS = {"norm", "in_layers_0", "out_layers_0", "out_0"}


def adm_torch_key_to_path(key: str) -> tuple[str, ...] | None:
    """guided-diffusion ``UNetModel`` state-dict key -> Flax parameter path.

    Every ``.N`` index is joined to the name before it: ``input_blocks.1.0.in_layers.2.weight`` ->
    ``("input_blocks_1_0", "in_layers_2", "kernel")``. ``weight`` becomes ``scale`` for GroupNorms,
    ``embedding`` for ``label_emb`` and ``kernel`` otherwise. The model has no buffers, so no key maps to
    ``None``; a key the model lacks maps to a path that does not exist and the strict converter reports it.
    """
    parts = key.split(".")
    module: list[str] = []
    for part in parts[:-1]:
        if part.isdigit() and module:
            module[-1] = f"{module[-1]}_{part}"
        else:
            module.append(part)
    leaf = parts[-1]
    if leaf == "weight":
        last = module[-1] if module else ""
        leaf = "scale" if last in _ADM_NORMS else "embedding" if last == "label_emb" else "kernel"
    return (*module, leaf)


def convert_adm_state_dict(state: Mapping[str, np.ndarray] | str | os.PathLike, cfg: Any) -> dict:
    """Maps a guided-diffusion state dict (or a ``.pt``/``.npz`` path) onto float32 Flax params, strictly.

    Returns the bare parameter tree for ``model.apply({"params": params}, ...)`` of
    :class:`deqir_jax.models.adm.UNetModel`.
    """
    if isinstance(state, (str, os.PathLike)):
        state = torch_convert.load_torch_state_dict(state)
    return torch_convert.convert_state_dict(state, adm.init_params_shapes(cfg), adm_torch_key_to_path)


# ----------------------------------------------------------------------------------------------- DDPM (CelebA-HQ Model)
_DDPM_NORMS = {"norm", "norm1", "norm2", "norm_out"}
_DDPM_KEY = re.compile(
    r"^(?:(?P<temb>temb\.dense\.\d+)"
    r"|(?P<path>(?:down|up)\.\d+\.(?:block|attn)\.\d+)\.(?P<sub>\w+)"
    r"|(?P<resamp>(?:down\.\d+\.downsample|up\.\d+\.upsample))\.conv"
    r"|(?P<mid>mid\.(?:block_1|attn_1|block_2))\.(?P<midsub>\w+)"
    r"|(?P<single>conv_in|norm_out|conv_out))"
    r"\.(?P<leaf>weight|bias)$"
)


def ddpm_torch_key_to_path(key: str) -> tuple[str, ...] | None:
    """PyTorch ``state_dict`` key of the DDIM ``Model`` -> Flax parameter path.

    ``down.1.block.0.conv1.weight`` -> ``("down_1_block_0", "conv1", "kernel")``; norm weights become
    ``scale`` under the private ``gn`` GroupNorm. Unknown keys map to a path that does not exist (so the
    strict converter lists them as unused); there are no buffers to ignore.
    """
    match = _DDPM_KEY.match(key)
    if match is None:
        return ("<unknown>", key)
    leaf = match["leaf"]
    if match["temb"]:
        return (match["temb"].replace(".", "_"), "kernel" if leaf == "weight" else "bias")
    if match["resamp"]:
        return (match["resamp"].replace(".", "_"), "conv", "kernel" if leaf == "weight" else "bias")
    if match["single"]:
        name = match["single"]
        if name in _DDPM_NORMS:
            return (name, "gn", "scale" if leaf == "weight" else "bias")
        return (name, "kernel" if leaf == "weight" else "bias")
    top, sub = (match["path"], match["sub"]) if match["path"] else (match["mid"], match["midsub"])
    top = top.replace(".", "_")
    if sub in _DDPM_NORMS:
        return (top, sub, "gn", "scale" if leaf == "weight" else "bias")
    return (top, sub, "kernel" if leaf == "weight" else "bias")


def convert_ddpm_state_dict(state: Mapping[str, np.ndarray], cfg: Any) -> dict:
    """Maps an official ``Model`` state dict (e.g. ``celeba_hq.ckpt``) onto float32 Flax params, strictly."""
    return torch_convert.convert_state_dict(state, ddpm.param_shapes(cfg), ddpm_torch_key_to_path)


# ----------------------------------------------------------------------------------------------- by architecture
CONVERTERS: dict[str, Callable[[Mapping[str, np.ndarray], Any], dict]] = {
    "adm": convert_adm_state_dict, "ddpm": convert_ddpm_state_dict,
}


def convert_prior_state_dict(state: Mapping[str, np.ndarray], model_config: Any) -> dict:
    """Maps an official PyTorch state dict onto the Flax parameters of ``config.model`` (strict), by its ``arch``."""
    models.architecture(model_config)  # one-line error for an unknown arch
    return CONVERTERS[models.arch_name(model_config)](state, model_config)
