"""Swin stage of the ResShift UNet: official masks, relative-position indices, blocks vs. the tiny fixture."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resshift_jax.convert_keys import convert_unet_state_dict, unet_torch_key_to_path
from resshift_jax.models import swin, unet_swin

RTOL = ATOL = 1e-4  # fixtures README: networks at rtol/atol 1e-4 in float32
MASK_KEY = re.compile(r"swin_mask/H(\d+)_W(\d+)_ws(\d+)_shift(\d+)$")
INDEX_KEY = re.compile(r"swin/relative_position_index_ws(\d+)$")


@pytest.fixture(scope="module")
def ops(load_fixture):
    return load_fixture("resshift/ops_reference")


def test_masks_equal_official(ops):
    keys = [k for k in ops.files if k.startswith("swin_mask/")]
    assert keys, "ops_reference holds no swin_mask entries"
    for key in keys:
        height, width, window, shift = map(int, MASK_KEY.match(key).groups())
        mine = swin.shifted_window_mask(height, width, window, shift)
        assert mine.dtype == np.float32
        assert mine.shape == ops[key].shape, key
        assert np.array_equal(mine, ops[key]), key


def test_relative_position_index_equal_official(ops):
    keys = [k for k in ops.files if k.startswith("swin/relative_position_index_ws")]
    assert keys
    for key in keys:
        window = int(INDEX_KEY.match(key).group(1))
        assert np.array_equal(swin.relative_position_index(window), ops[key]), key


def test_official_mask_is_not_the_textbook_one():
    # Textbook Swin also separates the last column of windows; the official mask leaves it unmasked
    # except in the last row of windows.
    mask = swin.shifted_window_mask(16, 16, 4, 2).reshape(4, 4, 16, 16)
    assert not mask[:3].any()  # only the last row of windows is masked
    assert mask[3].min() == swin.MASK_VALUE
    np.testing.assert_array_equal(mask[3, 0], mask[3, 3])  # same mask for every window of that row


def test_zero_shift_and_bad_sizes():
    assert not swin.shifted_window_mask(8, 12, 4, 0).any()
    with pytest.raises(ValueError, match="multiple of the Swin window"):
        swin.shifted_window_mask(10, 8, 4, 2)
    assert swin.effective_window(8, 8, 4) == (8, 0)  # resolution <= window: one window, no shift
    assert swin.effective_window(16, 8, 4) == (8, 4)
    with pytest.raises(ValueError, match="shift_size"):
        swin.effective_window(16, 8, 8)


def test_window_partition_round_trip():
    x = jnp.arange(2 * 8 * 12 * 3, dtype=jnp.float32).reshape(2, 8, 12, 3)
    windows = swin.window_partition(x, 4)
    assert windows.shape == (2 * 6, 16, 3)
    # window (0, 1) of image 0 holds rows 0..3, cols 4..7 in row-major order
    np.testing.assert_array_equal(windows[1, :, 0], x[0, 0:4, 4:8, 0].reshape(-1))
    np.testing.assert_array_equal(swin.window_reverse(windows, 4, 8, 12), x)


def test_stage_buffers_shapes():
    buffers = swin.stage_buffers(img_size=32, window_size=8, depth=2)
    assert set(buffers) == {"blocks.0.attn.relative_position_index", "blocks.1.attn.relative_position_index",
                            "blocks.1.attn_mask"}
    assert buffers["blocks.1.attn_mask"].shape == (16, 64, 64)
    assert set(swin.stage_buffers(img_size=8, window_size=8, depth=2)) == {
        "blocks.0.attn.relative_position_index", "blocks.1.attn.relative_position_index"}


def test_swin_blocks_match_fixture(load_fixture):
    """The recorded Swin stage of the tiny real-SR UNet (the ``act/<stage>.patch_embed`` ... entries), block by
    block; heads, construction size, window and depth come from the configuration of that stage."""
    fx = load_fixture("resshift/unet_tiny_realsr")
    kw = fx.meta["constructor_kwargs"]
    model = unet_swin.model_from_config(kw)
    stages = dict(model.plan().swin_stages())  # PyTorch prefix "input_blocks.1.1." -> construction size
    recorded = [k[len("act/"):-len("patch_embed")] for k in fx.files
                if k.startswith("act/") and k.endswith(".patch_embed")]
    assert len(recorded) == 1 and recorded[0] in stages, f"recorded Swin stage {recorded} not in {list(stages)}"
    prefix, img_size = recorded[0], stages[recorded[0]]
    state = {k[len("sd/"):]: fx[k] for k in fx.files if k.startswith("sd/")}
    stage_params = convert_unet_state_dict(state, kw)
    for name in unet_torch_key_to_path(prefix + "x")[:-1]:
        stage_params = stage_params[name]

    def act(name):  # CHW of batch element 0 -> NHWC with batch 1
        return jnp.asarray(fx[f"act/{prefix}{name}"].transpose(1, 2, 0)[None])

    def check(got, name):
        np.testing.assert_allclose(np.asarray(got)[0].transpose(2, 0, 1), fx[f"act/{prefix}{name}"],
                                   rtol=RTOL, atol=ATOL, err_msg=name)

    x = act("patch_embed")
    for i in range(model.swin_depth):
        block = swin.SwinBlock(model.swin_embed_dim, model.swin_heads, img_size=img_size,
                               window_size=model.window_size,
                               shift_size=0 if i % 2 == 0 else model.window_size // 2, mlp_ratio=model.mlp_ratio)
        out = jax.jit(block.apply)({"params": stage_params[f"blocks_{i}"]}, x)
        check(out, f"blocks.{i}")
        x = act(f"blocks.{i}")
    unembed = swin.PatchProjection(fx[f"act/{prefix}patch_unembed"].shape[0], patch_norm=model.patch_norm)
    check(unembed.apply({"params": stage_params["patch_unembed"]}, x), "patch_unembed")
