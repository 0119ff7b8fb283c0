"""The ``config.model`` section of guided-diffusion's ADM UNet, as data (imports nothing but ml_collections).

Configs (``configs/deqir/models/*.py``) build their model section here without importing the network code;
:mod:`deqir_jax.models.adm` reads it.
"""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections

NUM_CLASSES = 1000  # guided-diffusion's class-conditional models are ImageNet-1k
CONFIG_FIELDS = {
    "arch": "adm",
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "channel_mult": "",
    "attention_resolutions": "16,8",
    "num_heads": 4,
    "num_head_channels": -1,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "learn_sigma": False,
    "class_cond": False,
    "dropout": 0.0,
    "use_new_attention_order": False,
    "dtype": "float32",
}
OPTIONAL_FIELDS = {"in_channels": 3, "num_classes": NUM_CLASSES, "conv_resample": True}


def guided_diffusion_model_config(**overrides: Any) -> ml_collections.ConfigDict:
    """A ``config.model`` ConfigDict with guided-diffusion's ``model_and_diffusion_defaults()`` model flags
    (the defaults its sampling scripts start from), plus ``arch='adm'`` and ``dtype='float32'``.

    Keyword arguments override fields; an unknown name raises ValueError.
    """
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ValueError(f"unknown ADM config field(s): {', '.join(unknown)}")
    return ml_collections.ConfigDict({**CONFIG_FIELDS, **overrides})


def config_from_create_model_kwargs(kwargs: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Translates guided-diffusion ``create_model(**kwargs)`` arguments into a ``config.model``.

    ``use_fp16`` becomes ``dtype`` (``float16`` / ``float32``); ``use_checkpoint`` (gradient checkpointing,
    no effect on the numbers) is dropped. Arguments that are left out take ``create_model``'s own defaults.
    """
    kwargs = dict(kwargs)
    use_fp16 = bool(kwargs.pop("use_fp16", False))
    kwargs.pop("use_checkpoint", None)
    create_model_defaults = {
        "channel_mult": "", "learn_sigma": False, "class_cond": False, "attention_resolutions": "16",
        "num_heads": 1, "num_head_channels": -1, "num_heads_upsample": -1, "use_scale_shift_norm": False,
        "dropout": 0.0, "resblock_updown": False, "use_new_attention_order": False,
    }
    merged = {**create_model_defaults, **kwargs}
    merged.setdefault("dtype", "float16" if use_fp16 else "float32")
    return guided_diffusion_model_config(**merged)
