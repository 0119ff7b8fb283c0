"""The two prior networks DeqIR uses, chosen by ``config.model.arch``.

* ``"adm"``: guided-diffusion's ``UNetModel`` (ImageNet / LSUN checkpoints), :mod:`deqir_jax.models.adm`.
* ``"ddpm"``: the DDIM-style ``Model`` of the CelebA-HQ checkpoint, :mod:`deqir_jax.models.ddpm`.

Their PyTorch checkpoints are converted by :mod:`deqir_jax.convert_keys`.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

ARCHITECTURES = {"adm": "deqir_jax.models.adm", "ddpm": "deqir_jax.models.ddpm"}


def arch_name(model_config: Any) -> Any:
    """``model_config.arch`` of a ConfigDict, mapping or object (None when it has none)."""
    return model_config.get("arch") if hasattr(model_config, "get") else getattr(model_config, "arch", None)


def architecture(model_config: Any) -> ModuleType:
    """The module implementing ``model_config.arch``."""
    arch = arch_name(model_config)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    return importlib.import_module(ARCHITECTURES[arch])


def model_from_config(model_config: Any):
    """Builds the Flax module described by ``config.model``."""
    return architecture(model_config).model_from_config(model_config)

