"""Released PyTorch weights -> Flax parameter trees of the ResShift networks: the state-dict key mappings
(``unet_torch_key_to_path``, ``vq_torch_key_to_path``) and the strict converters (:func:`convert_unet_state_dict`,
:func:`convert_vq_state_dict`), used by :mod:`resshift_jax.convert` (files and command line) and the tests.

The mapping is strict: every unused checkpoint key, every missing parameter and every shape mismatch is reported;
the UNet's stored Swin buffers (``attn_mask``, ``relative_position_index``) are checked against the recomputed ones.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np
from flax import traverse_util

from ircore import torch_convert
from resshift_jax.models import swin, unet_swin, vq


# ----------------------------------------------------------------------------------------------- UNet
_BUFFERS = ("attn_mask", "relative_position_index")
_NORMS = {"in_layers_0", "out_layers_0", "norm1", "norm2", "norm", "out_0"}


def unet_torch_key_to_path(key: str) -> tuple[str, ...] | None:
    """Official state-dict name -> Flax parameter path; ``None`` for the recomputed Swin buffers.

    ``input_blocks.1.1.blocks.0.attn.qkv.weight`` -> ``('input_blocks_1_1', 'blocks_0', 'attn', 'qkv',
    'kernel')``: list indices join their module name with ``_``; ``weight`` is ``scale`` for GroupNorms,
    else ``kernel``. ``module.`` / ``_orig_mod.`` prefixes are dropped.
    """
    parts = torch_convert.strip_prefix(key).split(".")
    leaf = parts[-1]
    if leaf in _BUFFERS:
        return None
    modules: list[str] = []
    for part in parts[:-1]:
        if part.isdigit() and modules:
            modules[-1] = f"{modules[-1]}_{part}"
        else:
            modules.append(part)
    if leaf == "weight":
        leaf = "scale" if modules and modules[-1] in _NORMS else "kernel"
    return (*modules, leaf)


def unet_expected_buffers(cfg: Any) -> dict[str, np.ndarray]:
    """The Swin buffers (``attn_mask``, ``relative_position_index``) an official checkpoint of this
    configuration stores, recomputed, by state-dict name."""
    model = unet_swin.model_from_config(cfg)
    buffers = {}
    for prefix, ds in model.plan().swin_stages():
        for name, value in swin.stage_buffers(ds, model.window_size, model.swin_depth).items():
            buffers[prefix + name] = value
    return buffers


def check_unet_buffers(state: Mapping[str, np.ndarray], cfg: Any) -> None:
    """Raises ConversionError if a stored Swin buffer is unexpected or differs from the recomputed one."""
    expected = unet_expected_buffers(cfg)
    problems = []
    for key in sorted(state):
        name = torch_convert.strip_prefix(key)
        if name.rsplit(".", 1)[-1] not in _BUFFERS:
            continue
        if name not in expected:
            problems.append(f"unexpected buffer {key}")
            continue
        stored, mine = np.asarray(state[key]), expected[name]
        if stored.shape != mine.shape or not np.array_equal(stored.astype(mine.dtype), mine):
            problems.append(f"buffer {key} {stored.shape} differs from the recomputed {mine.shape}")
    if problems:
        raise torch_convert.ConversionError("checkpoint buffers do not match the model: " + "; ".join(problems))


def convert_unet_state_dict(state: Mapping[str, np.ndarray], cfg: Any) -> dict:
    """Official UNetModelSwin state dict ``{name: array}`` -> Flax ``params`` tree of the UNet of ``cfg``.

    Strict: raises ConversionError naming every unused key, missing parameter or shape mismatch, and every
    stored Swin buffer that is unexpected or differs from the one recomputed here.
    """
    model = unet_swin.model_from_config(cfg)
    params = torch_convert.convert_state_dict(state, unet_swin.param_shapes(model), unet_torch_key_to_path)
    check_unet_buffers(state, cfg)
    return params


# ----------------------------------------------------------------------------------------------- VQ autoencoder
_INDEXED = re.compile(r"^(down|up|block|attn)_(\d+)$")


def vq_torch_key_to_path(key: str) -> tuple[str, ...] | None:
    """PyTorch ``VQModelTorch`` state-dict key -> Flax parameter path.

    ``encoder.down.1.block.0.norm1.weight`` -> ``("encoder", "down_1", "block_0", "norm1", "scale")``;
    ``quantize.embedding.weight`` -> ``("codebook", "embedding")``. Keys under ``loss.`` (the LPIPS /
    discriminator training loss that Lightning ``VQModel`` checkpoints from CompVis carry) return ``None``.
    """
    if key.startswith("loss."):
        return None
    if key == "quantize.embedding.weight":
        return ("codebook", "embedding")
    *modules, leaf = key.split(".")
    path: list[str] = []
    for part in modules:
        if part.isdigit() and path:
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    if leaf == "weight":
        leaf = "scale" if modules and modules[-1].startswith("norm") else "kernel"
    return (*path, leaf)


def vq_path_to_torch_key(path: Sequence[str]) -> str:
    """Inverse of :func:`vq_torch_key_to_path` for the model's own parameters."""
    path = tuple(path)
    if path == ("codebook", "embedding"):
        return "quantize.embedding.weight"
    parts: list[str] = []
    for i, part in enumerate(path[:-1]):
        match = _INDEXED.match(part)
        if match and (i == 0 or path[i - 1] != "mid"):
            parts += [match[1], match[2]]
        else:
            parts.append(part)
    leaf = "weight" if path[-1] in ("kernel", "scale") else path[-1]
    return ".".join([*parts, leaf])


def convert_vq_state_dict(state: Mapping[str, np.ndarray], cfg: Any) -> dict:
    """Maps an official ``VQModelTorch`` state dict onto float32 Flax params, strictly.

    Raises ``ConversionError`` naming every unused key, every missing parameter (both as Flax path and as
    the PyTorch key it expects) and every shape mismatch. ``loss.*`` entries are ignored.
    """
    target = vq.param_shapes(cfg)
    try:
        return torch_convert.convert_state_dict(state, target, vq_torch_key_to_path)
    except torch_convert.ConversionError as err:
        expected = {vq_path_to_torch_key(p) for p in traverse_util.flatten_dict(target)}
        missing = sorted(expected - set(state))
        if missing:
            raise torch_convert.ConversionError(
                f"{err} | {len(missing)} missing checkpoint key(s): {', '.join(missing)}") from None
        raise
