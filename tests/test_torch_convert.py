"""The generic PyTorch -> Flax conversion helpers (ircore.torch_convert)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ircore import torch_convert as tc


def _target():
    return {
        "conv": {"kernel": np.zeros((3, 3, 2, 4), np.float32), "bias": np.zeros((4,), np.float32)},
        "dense": {"kernel": np.zeros((5, 6), np.float32)},
        "norm": {"scale": np.zeros((4,), np.float32), "bias": np.zeros((4,), np.float32)},
        "qkv": {"kernel": np.zeros((4, 12), np.float32)},
    }


def _state(rng):
    return {
        "conv.weight": rng.normal(size=(4, 2, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(size=(4,)).astype(np.float32),
        "dense.weight": rng.normal(size=(6, 5)).astype(np.float32),
        "norm.weight": rng.normal(size=(4,)).astype(np.float32),
        "norm.bias": rng.normal(size=(4,)).astype(np.float32),
        "qkv.weight": rng.normal(size=(12, 4, 1)).astype(np.float32),
        "attn.mask": np.ones((2, 2), np.float32),
    }


def _key_to_path(key):
    if key.startswith("attn."):
        return None
    module, leaf = key.split(".")
    return (module, tc.default_leaf_name(leaf, is_norm=module == "norm"))


def test_layout_rules_match_torch_ops():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 2, 7, 7)).astype(np.float32)
    w = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    import jax

    out = jax.lax.conv_general_dilated(
        np.transpose(x, (0, 2, 3, 1)), tc.conv_kernel(w), (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(np.transpose(np.asarray(out), (0, 3, 1, 2)), ref, atol=1e-5)
    lin = rng.normal(size=(6, 5)).astype(np.float32)
    v = rng.normal(size=(3, 5)).astype(np.float32)
    np.testing.assert_allclose(v @ tc.linear_kernel(lin), v @ lin.T, atol=1e-6)
    w1 = rng.normal(size=(12, 4, 1)).astype(np.float32)
    np.testing.assert_array_equal(tc.conv1d_kernel(w1, 2), w1[:, :, 0].T)


def test_convert_maps_every_tensor(tmp_path):
    rng = np.random.default_rng(1)
    state = _state(rng)
    params = tc.convert_state_dict(state, _target(), _key_to_path)
    np.testing.assert_array_equal(params["conv"]["kernel"], np.transpose(state["conv.weight"], (2, 3, 1, 0)))
    np.testing.assert_array_equal(params["dense"]["kernel"], state["dense.weight"].T)
    np.testing.assert_array_equal(params["norm"]["scale"], state["norm.weight"])
    np.testing.assert_array_equal(params["qkv"]["kernel"], state["qkv.weight"][:, :, 0].T)


def test_convert_names_every_offending_key():
    rng = np.random.default_rng(2)
    state = _state(rng)
    state["extra.weight"] = np.zeros((3,), np.float32)
    del state["norm.bias"]
    state["dense.weight"] = np.zeros((7, 5), np.float32)
    with pytest.raises(tc.ConversionError) as err:
        tc.convert_state_dict(state, _target(), _key_to_path)
    msg = str(err.value)
    assert "extra.weight" in msg
    assert "norm/bias" in msg
    assert "dense.weight" in msg and "(5, 6)" in msg
    assert "\n" not in msg


def test_convert_names_every_non_finite_tensor():
    state = _state(np.random.default_rng(3))
    state["conv.weight"][0, 0, 1, 1] = np.nan
    state["norm.bias"][:2] = np.inf
    with pytest.raises(tc.ConversionError) as err:
        tc.convert_state_dict(state, _target(), _key_to_path)
    msg = str(err.value)
    assert "conv.weight (1 of 72 values)" in msg and "norm.bias (2 of 4 values)" in msg
    assert "NaN or infinite" in msg and "dense.weight" not in msg and "\n" not in msg


@pytest.mark.parametrize("prefixes", [("module.",), ("module.", "_orig_mod.")])
def test_strip_prefix_removes_nested_wrappers(prefixes):
    assert tc.strip_prefix("module.net.w", prefixes) == "net.w"
    assert tc.strip_prefix("net.module.w", prefixes) == "net.module.w"
    nested = tc.strip_prefix("module._orig_mod.net.w", prefixes)
    assert nested == ("net.w" if "_orig_mod." in prefixes else "_orig_mod.net.w")
    assert tc.strip_prefixes({"module.a": 1, "b": 2}, prefixes) == {"a": 1, "b": 2}


def test_load_torch_state_dict_reads_pt_and_npz(tmp_path):
    rng = np.random.default_rng(3)
    state = _state(rng)
    pt = tmp_path / "model.pt"
    torch.save({"state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in state.items()}}, pt)
    loaded = tc.load_torch_state_dict(pt)
    assert sorted(loaded) == sorted(state)
    for key in state:
        np.testing.assert_array_equal(loaded[key], state[key])
    npz = tmp_path / "model.npz"
    np.savez(npz, **state)
    loaded = tc.load_torch_state_dict(npz)
    assert sorted(loaded) == sorted(state)


def test_half_precision_checkpoint_is_read_as_float32(tmp_path):
    pt = tmp_path / "half.pt"
    torch.save({"w": torch.ones(2, 2, dtype=torch.float16)}, pt)
    assert tc.load_torch_state_dict(pt)["w"].dtype == np.float32


def test_unreadable_checkpoint_gives_one_line_error(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(tc.ConversionError, match="cannot read checkpoint"):
        tc.load_torch_state_dict(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tc.load_torch_state_dict(tmp_path / "missing.pt")
