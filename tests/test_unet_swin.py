"""ResShift Swin-UNet vs. the official PyTorch outputs (tiny real-SR and inpainting fixtures), converter
strictness, and the released configurations."""
from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ircore.config_utils import load_config_file
from ircore.layers import count_params
from ircore.torch_convert import ConversionError
from resshift_jax.models import unet_swin

RTOL = ATOL = 1e-4  # fixtures README: networks at rtol/atol 1e-4 in float32
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs" / "resshift"
RELEASED = ["realsr_x4_v1", "realsr_x4_v2", "realsr_x4_v3", "bicsr_x4", "inpaint_imagenet", "inpaint_face",
            "faceir"]
# Spec (specs/resshift.md section 3): parameter counts of the released UNets, from the official classes.
RELEASED_PARAMS = {"realsr_x4_v1": 118_593_583, "realsr_x4_v2": 118_593_583, "realsr_x4_v3": 118_593_583,
                   "bicsr_x4": 118_593_583, "inpaint_imagenet": 118_714_399, "inpaint_face": 118_714_399,
                   "faceir": 118_931_604}
# Tag of diffusion_schedules.json holding the official diffusion.params of each released model.
SCHEDULE_TAG = {"realsr_x4_v1": "realsr_v1v2", "realsr_x4_v2": "realsr_v1v2", "realsr_x4_v3": "realsr_v3",
                "bicsr_x4": "bicsr", "inpaint_imagenet": "inpaint_imagenet", "inpaint_face": "inpaint_face",
                "faceir": "faceir"}


def nhwc(a: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(np.transpose(a, (0, 2, 3, 1)))


def nchw(a) -> np.ndarray:
    return np.transpose(np.asarray(a), (0, 3, 1, 2))


def state_dict(fx) -> dict[str, np.ndarray]:
    return {k[len("sd/"):]: fx[k] for k in fx.files if k.startswith("sd/")}


class Loaded:
    """A fixture with its model, converted parameters and a jitted forward that records intermediates."""

    def __init__(self, fx):
        self.fx = fx
        self.kwargs = fx.meta["constructor_kwargs"]
        self.model = unet_swin.model_from_config(self.kwargs)
        self.params = unet_swin.convert_torch_state_dict(state_dict(fx), self.kwargs)
        model = self.model

        def forward(params, x, t, lq, mask):
            return model.apply({"params": params}, x, t, lq=lq, mask=mask, capture_intermediates=True,
                               mutable=["intermediates"])

        self.forward = jax.jit(forward)

    def run(self, suffix: str = ""):
        fx = self.fx
        mask = nhwc(fx[f"in/mask{suffix}"]) if f"in/mask{suffix}" in fx else None
        y, state = self.forward(self.params, nhwc(fx[f"in/x{suffix}"]), jnp.asarray(fx[f"in/t{suffix}"]),
                                nhwc(fx[f"in/lq{suffix}"]), mask)
        return y, state["intermediates"]


@pytest.fixture(scope="module")
def realsr(load_fixture):
    return Loaded(load_fixture("resshift/unet_tiny_realsr"))


@pytest.fixture(scope="module")
def inpaint(load_fixture):
    return Loaded(load_fixture("resshift/unet_tiny_inpaint"))


@pytest.fixture(scope="module")
def realsr_run(realsr):
    return realsr.run()


def intermediate(tree, model: unet_swin.UNetModelSwin, torch_name: str):
    """Output of the official module ``torch_name`` (``input_blocks.3``, ``middle_block``, ``time_embed``,
    ``input_blocks.1.1.blocks.0`` ...) from Flax's captured intermediates."""
    plan = model.plan()
    parts = torch_name.split(".")
    if parts[0] == "time_embed":
        path = ["time_embed_2"]
    elif parts[0] == "feature_extractor":
        path = [f"feature_extractor_{3 * len(plan.extractor) - 1}"]
    elif parts[0] == "middle_block":
        path = [f"middle_block_{len(plan.middle_block) - 1}"]
    else:
        group, index = parts[0], int(parts[1])
        blocks = plan.input_blocks if group == "input_blocks" else plan.output_blocks
        layer = int(parts[2]) if len(parts) > 2 else len(blocks[index]) - 1
        path = [f"{group}_{index}_{layer}"]
        rest = parts[3:]
        while rest:
            if len(rest) > 1 and rest[1].isdigit():
                path.append(f"{rest[0]}_{rest[1]}")
                rest = rest[2:]
            else:
                path.append(rest[0])
                rest = rest[1:]
    node = tree
    for name in path:
        node = node[name]
    (value,) = node["__call__"]
    return np.asarray(value)


# ----------------------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("name", ["unet_tiny_realsr", "unet_tiny_inpaint"])
def test_param_count_matches_sidecar(load_fixture, name):
    fx = load_fixture(f"resshift/{name}")
    model = unet_swin.model_from_config(fx.meta["constructor_kwargs"])
    assert unet_swin.num_params(model) == fx.meta["n_params"]


@pytest.mark.parametrize("name", ["unet_tiny_realsr", "unet_tiny_inpaint"])
def test_recomputed_buffers_equal_stored(load_fixture, name):
    fx = load_fixture(f"resshift/{name}")
    stored = {k[len("sd/"):]: fx[k] for k, v in fx.meta["keys"].items()
              if k.startswith("sd/") and v.get("kind") == "buffer"}
    mine = unet_swin.expected_buffers(fx.meta["constructor_kwargs"])
    assert set(mine) == set(stored)
    assert any(k.endswith("attn_mask") for k in stored)
    for key, value in stored.items():
        assert mine[key].shape == value.shape, key
        assert np.array_equal(mine[key], value), key


def test_torch_key_to_path():
    f = unet_swin.torch_key_to_path
    assert f("input_blocks.1.1.blocks.0.attn.qkv.weight") == (
        "input_blocks_1_1", "blocks_0", "attn", "qkv", "kernel")
    assert f("module.input_blocks.1.0.in_layers.0.weight") == ("input_blocks_1_0", "in_layers_0", "scale")
    assert f("_orig_mod.out.0.weight") == ("out_0", "scale")
    assert f("out.2.weight") == ("out_2", "kernel")
    assert f("middle_block.1.blocks.1.norm2.bias") == ("middle_block_1", "blocks_1", "norm2", "bias")
    assert f("feature_extractor.2.op.weight") == ("feature_extractor_2", "op", "kernel")
    assert f("input_blocks.1.1.blocks.1.attn_mask") is None
    assert f("input_blocks.1.1.blocks.0.attn.relative_position_index") is None


# ----------------------------------------------------------------------------------------------- real SR
def test_realsr_output(realsr, realsr_run):
    y, _ = realsr_run
    np.testing.assert_allclose(nchw(y), realsr.fx["out/y"], rtol=RTOL, atol=ATOL)


def test_realsr_activations(realsr, realsr_run):
    _, tree = realsr_run
    keys = [k for k in realsr.fx.files if k.startswith("act/")]
    assert keys
    failures = []
    for key in keys:  # in recording order: the first failure is the first diverging block
        expected = realsr.fx[key]
        got = intermediate(tree, realsr.model, key[len("act/"):])[0]
        if got.ndim == 3:
            got = got.transpose(2, 0, 1)
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=RTOL, atol=ATOL):
            err = np.abs(got - expected).max() if got.shape == expected.shape else "shape"
            failures.append(f"{key}: max abs err {err}")
    assert not failures, "; ".join(failures)


def test_realsr_output_at_other_size(realsr):
    """64x96 (not the construction size): Swin masks recomputed at run time."""
    y, _ = realsr.run("_big")
    np.testing.assert_allclose(nchw(y), realsr.fx["out/y_big"], rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------------- inpainting
def test_inpaint_feature_extractor_and_output(inpaint):
    y, tree = inpaint.run()
    features = intermediate(tree, inpaint.model, "feature_extractor")
    np.testing.assert_allclose(nchw(features), inpaint.fx["act/feature_extractor"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(nchw(y), inpaint.fx["out/y"], rtol=RTOL, atol=ATOL)


def test_bfloat16_compute_close_to_float32(inpaint):
    fx = inpaint.fx
    model = unet_swin.model_from_config(inpaint.kwargs, dtype=jnp.bfloat16)
    forward = jax.jit(lambda p, x, t, lq, mask: model.apply({"params": p}, x, t, lq=lq, mask=mask))
    y = forward(inpaint.params, nhwc(fx["in/x"]), jnp.asarray(fx["in/t"]), nhwc(fx["in/lq"]), nhwc(fx["in/mask"]))
    assert y.dtype == jnp.float32
    assert jax.tree_util.tree_all(jax.tree.map(lambda p: p.dtype == jnp.float32, inpaint.params))
    rel = np.linalg.norm(nchw(y) - fx["out/y"]) / np.linalg.norm(fx["out/y"])
    assert 0 < rel < 0.05, rel  # bfloat16 really used, and still close


def test_bad_inputs_raise(inpaint):
    fx, model, params = inpaint.fx, inpaint.model, inpaint.params
    x, t, lq, mask = nhwc(fx["in/x"]), jnp.asarray(fx["in/t"]), nhwc(fx["in/lq"]), nhwc(fx["in/mask"])
    apply = lambda *a, **k: jax.eval_shape(lambda: model.apply({"params": params}, *a, **k))
    with pytest.raises(ValueError, match="pass mask="):
        apply(x, t, lq=lq)
    with pytest.raises(ValueError, match="pass lq="):
        apply(x, t, mask=mask)
    with pytest.raises(ValueError, match="multiple of"):
        apply(x[:, :12, :12], t, lq=lq, mask=mask)
    with pytest.raises(ValueError, match="lq of spatial size"):
        apply(x, t, lq=lq[:, :32, :32], mask=mask[:, :32, :32])
    with pytest.raises(ValueError, match="t must have shape"):
        apply(x, t[:1], lq=lq, mask=mask)


# ----------------------------------------------------------------------------------------------- converter
def test_mismatched_checkpoint_raises(load_fixture, realsr):
    state = state_dict(realsr.fx)
    kwargs = realsr.kwargs
    broken = dict(state)
    del broken["out.2.bias"]
    broken["input_blocks.1.0.extra.weight"] = np.zeros((3,), np.float32)
    broken["time_embed.0.weight"] = state["time_embed.0.weight"][:, :-1]
    with pytest.raises(ConversionError) as err:
        unet_swin.convert_torch_state_dict(broken, kwargs)
    message = str(err.value)
    for name in ("out_2/bias", "input_blocks.1.0.extra.weight", "time_embed.0.weight"):
        assert name in message

    # wrong window size: the stored buffers name the mistake
    bad_buffer = dict(state)
    bad_buffer["input_blocks.1.1.blocks.1.attn_mask"] = np.zeros_like(state["input_blocks.1.1.blocks.1.attn_mask"])
    with pytest.raises(ConversionError, match="input_blocks.1.1.blocks.1.attn_mask"):
        unet_swin.convert_torch_state_dict(bad_buffer, kwargs)

    # the inpainting checkpoint does not fit the real-SR model
    with pytest.raises(ConversionError, match="feature_extractor"):
        unet_swin.convert_torch_state_dict(state_dict(load_fixture("resshift/unet_tiny_inpaint")), kwargs)


def test_wrapper_prefixes_are_accepted(realsr):
    state = {"module." + k: v for k, v in state_dict(realsr.fx).items()}
    params = unet_swin.convert_torch_state_dict(state, realsr.kwargs)
    chex_equal = jax.tree.map(np.array_equal, params, jax.tree.map(np.asarray, realsr.params))
    assert all(jax.tree_util.tree_leaves(chex_equal))


# ----------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", RELEASED)
def test_released_config(fixtures_dir, name):
    cfg = load_config_file(CONFIG_DIR / f"{name}.py")
    assert cfg.name == name and cfg.checkpoint_name.endswith(".pth")
    schedules = json.loads((fixtures_dir / "resshift" / "diffusion_schedules.json").read_text())
    assert cfg.diffusion.to_dict() == schedules["params_per_tag"][SCHEDULE_TAG[name]]
    assert cfg.model.in_channels == cfg.model.out_channels == cfg.autoencoder.params.embed_dim
    model = unet_swin.model_from_config(cfg)
    assert count_params(unet_swin.param_shapes(model)) == RELEASED_PARAMS[name]


def test_full_realsr_model_shapes():
    """The released real-SR x4 UNet under jax.eval_shape: 118,593,583 parameters, output shape."""
    cfg = load_config_file(CONFIG_DIR / "realsr_x4_v3.py")
    model = unet_swin.model_from_config(cfg)
    shapes = unet_swin.param_shapes(model)
    assert count_params(shapes) == 118_593_583
    inputs = unet_swin.dummy_inputs(model, batch=2, size=128)
    out = jax.eval_shape(lambda p: model.apply({"params": p}, inputs["x"], inputs["t"], lq=inputs["lq"]), shapes)
    assert out.shape == (2, 128, 128, 3)
