"""``deqir_jax.convert_keys``: the PyTorch -> Flax key mappings of DeqIR's priors and the converter by arch.

The strict conversions of the fixture weights are checked with the networks (tests/test_adm.py,
tests/test_ddpm.py, tests/test_deqir_convert.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from deqir_jax import convert_keys, models


def test_ddpm_torch_key_to_path_examples():
    key_to_path = convert_keys.ddpm_torch_key_to_path
    assert key_to_path("temb.dense.1.weight") == ("temb_dense_1", "kernel")
    assert key_to_path("down.2.block.1.norm1.weight") == ("down_2_block_1", "norm1", "gn", "scale")
    assert key_to_path("up.3.attn.2.proj_out.bias") == ("up_3_attn_2", "proj_out", "bias")
    assert key_to_path("down.0.downsample.conv.weight") == ("down_0_downsample", "conv", "kernel")
    assert key_to_path("mid.block_2.nin_shortcut.weight") == ("mid_block_2", "nin_shortcut", "kernel")
    assert key_to_path("norm_out.bias") == ("norm_out", "gn", "bias")
    assert key_to_path("logvar")[0] == "<unknown>"  # reported as unused by the strict converter


def test_adm_torch_key_to_path_examples():
    key_to_path = convert_keys.adm_torch_key_to_path
    assert key_to_path("input_blocks.1.0.in_layers.2.weight") == ("input_blocks_1_0", "in_layers_2", "kernel")
    assert key_to_path("input_blocks.1.0.in_layers.0.weight") == ("input_blocks_1_0", "in_layers_0", "scale")
    assert key_to_path("out.0.bias") == ("out_0", "bias")
    assert key_to_path("label_emb.weight") == ("label_emb", "embedding")
    assert key_to_path("time_embed.2.weight") == ("time_embed_2", "kernel")


def test_one_converter_per_architecture():
    assert sorted(convert_keys.CONVERTERS) == sorted(models.ARCHITECTURES)


def test_unknown_arch_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown model arch 'vit'") as err:
        convert_keys.convert_prior_state_dict({"w": np.zeros(1)}, {"arch": "vit"})
    assert "\n" not in str(err.value)
