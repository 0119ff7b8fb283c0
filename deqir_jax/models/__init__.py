"""The two prior networks DeqIR uses, chosen by ``config.model.arch``.

* ``"adm"``: guided-diffusion's ``UNetModel`` (ImageNet / LSUN checkpoints), :mod:`deqir_jax.models.adm`.
* ``"ddpm"``: the DDIM-style ``Model`` of the CelebA-HQ checkpoint, :mod:`deqir_jax.models.ddpm`.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Mapping

import numpy as np

ARCHITECTURES = {"adm": "deqir_jax.models.adm", "ddpm": "deqir_jax.models.ddpm"}


def architecture(model_config: Any) -> ModuleType:
    """The module implementing ``model_config.arch``."""
    arch = model_config.get("arch") if hasattr(model_config, "get") else getattr(model_config, "arch", None)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    return importlib.import_module(ARCHITECTURES[arch])


def model_from_config(model_config: Any):
    """Builds the Flax module described by ``config.model``."""
    return architecture(model_config).model_from_config(model_config)


def convert_torch_state_dict(state: Mapping[str, np.ndarray], model_config: Any) -> dict:
    """Maps an official PyTorch state dict onto the Flax parameters of ``config.model`` (strict)."""
    return architecture(model_config).convert_torch_state_dict(state, model_config)
