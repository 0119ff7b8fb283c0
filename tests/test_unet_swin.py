"""ResShift Swin-UNet vs. the official PyTorch outputs (tiny real-SR and inpainting fixtures), converter
strictness, and the released configurations."""
from __future__ import annotations

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ircore.config_utils import load_config_file
from ircore.layers import count_params
from ircore.torch_convert import ConversionError
from resshift_jax import convert_keys
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
        self.params = convert_keys.convert_unet_state_dict(state_dict(fx), self.kwargs)
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
    kwargs = fx.meta["constructor_kwargs"]
    mine = convert_keys.unet_expected_buffers(kwargs)
    assert set(mine) == set(stored)
    # shifted windows (hence masks) exist where a stage is larger than the window and has a second block
    model = unet_swin.model_from_config(kwargs)
    shifted = model.swin_depth > 1 and any(ds > model.window_size for _, ds in model.plan().swin_stages())
    assert any(k.endswith("attn_mask") for k in stored) == shifted
    for key, value in stored.items():
        assert mine[key].shape == value.shape, key
        assert np.array_equal(mine[key], value), key


def test_unet_torch_key_to_path():
    f = convert_keys.unet_torch_key_to_path
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


def test_bad_inputs_raise(inpaint, realsr):
    """Each invalid input is derived from the fixture's own configuration (sizes, channels, ratio)."""
    fx, model, params = inpaint.fx, inpaint.model, inpaint.params
    x, t, lq, mask = nhwc(fx["in/x"]), jnp.asarray(fx["in/t"]), nhwc(fx["in/lq"]), nhwc(fx["in/mask"])
    apply = lambda *a, **k: jax.eval_shape(lambda: model.apply({"params": params}, *a, **k))
    apply(x, t, lq=lq, mask=mask)  # the fixture's own inputs are valid
    with pytest.raises(ValueError, match="pass mask="):
        apply(x, t, lq=lq)
    with pytest.raises(ValueError, match="pass lq="):
        apply(x, t, mask=mask)
    if model.size_multiple > 1:  # one row and column fewer is never a multiple
        with pytest.raises(ValueError, match=f"multiple of {model.size_multiple}"):
            apply(x[:, :-1, :-1], t, lq=lq, mask=mask)
    half = (slice(None), slice(0, lq.shape[1] // 2), slice(0, lq.shape[2] // 2))
    with pytest.raises(ValueError, match="lq of spatial size"):
        apply(x, t, lq=lq[half], mask=mask[half])
    with pytest.raises(ValueError, match="t must have shape"):
        apply(x, jnp.concatenate([t, t]), lq=lq, mask=mask)
    with pytest.raises(ValueError, match=f"x must be NHWC with {model.in_channels} channels"):
        apply(jnp.concatenate([x, x[..., :1]], axis=-1), t, lq=lq, mask=mask)
    with pytest.raises(ValueError, match="lq must be an NHWC RGB batch"):
        apply(x, t, lq=jnp.concatenate([lq, lq[..., :1]], axis=-1), mask=mask)
    with pytest.raises(ValueError, match="mask must have shape"):
        apply(x, t, lq=lq, mask=jnp.concatenate([mask, mask], axis=-1))
    fx, model, params = realsr.fx, realsr.model, realsr.params
    x, t, lq = nhwc(fx["in/x"]), jnp.asarray(fx["in/t"]), nhwc(fx["in/lq"])
    with pytest.raises(ValueError, match="takes no mask"):
        apply(x, t, lq=lq, mask=lq[..., :1])


# ----------------------------------------------------------------------------------------------- converter
def test_mismatched_checkpoint_raises(load_fixture, realsr):
    state = state_dict(realsr.fx)
    kwargs = realsr.kwargs
    broken = dict(state)
    del broken["out.2.bias"]
    broken["input_blocks.1.0.extra.weight"] = np.zeros((3,), np.float32)
    broken["time_embed.0.weight"] = state["time_embed.0.weight"][:, :-1]
    with pytest.raises(ConversionError) as err:
        convert_keys.convert_unet_state_dict(broken, kwargs)
    message = str(err.value)
    for name in ("out_2/bias", "input_blocks.1.0.extra.weight", "time_embed.0.weight"):
        assert name in message

    # wrong window size: the stored buffers name the mistake (the first Swin buffer this configuration has)
    buffers = sorted(convert_keys.unet_expected_buffers(kwargs), key=lambda k: (not k.endswith("attn_mask"), k))
    assert buffers, "the real-SR configuration has no Swin stage"
    bad_buffer = dict(state)
    bad_buffer[buffers[0]] = np.asarray(state[buffers[0]]) + 1
    with pytest.raises(ConversionError, match=re.escape(buffers[0])):
        convert_keys.convert_unet_state_dict(bad_buffer, kwargs)

    # the inpainting checkpoint does not fit the real-SR model (it has a mask channel, maybe an LQ extractor)
    other = load_fixture("resshift/unet_tiny_inpaint")
    extractor_only_there = bool(unet_swin.model_from_config(other.meta["constructor_kwargs"]).plan().extractor
                                and not realsr.model.plan().extractor)
    with pytest.raises(ConversionError, match="feature_extractor" if extractor_only_there else ""):
        convert_keys.convert_unet_state_dict(state_dict(other), kwargs)


def test_wrapper_prefixes_are_accepted(realsr):
    state = {"module." + k: v for k, v in state_dict(realsr.fx).items()}
    params = convert_keys.convert_unet_state_dict(state, realsr.kwargs)
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


# ----------------------------------------------------------------------------------------------- any configuration
@pytest.mark.parametrize("ratio", [1, 2, 4])
def test_inpainting_unet_at_any_lq_ratio(ratio):
    """The inpainting UNet with lq_size = ratio * image_size (identity, one- or two-stage LQ extractor),
    num_heads with num_head_channels = -1, Swin depth 3 only at the lower level, 4 latent channels: the
    parameter shapes of the official constructor (``eval_shape``) and a forward at twice the size."""
    kwargs = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2),
                  num_res_blocks=(1, 2), attention_resolutions=(4,), num_heads=2, num_head_channels=-1,
                  swin_depth=3, swin_embed_dim=32, window_size=4, mlp_ratio=2.0, cond_lq=True, cond_mask=True,
                  lq_size=8 * ratio)
    model = unet_swin.model_from_config(kwargs)
    shapes = unet_swin.param_shapes(model)
    stages = int(np.log2(ratio))
    extractor = sorted(k for k in shapes if k.startswith("feature_extractor_"))
    assert extractor == [f"feature_extractor_{3 * i + j}" for i in range(stages) for j in (0, 2)]
    if stages:
        assert shapes["feature_extractor_0"]["kernel"].shape == (3, 3, 4, 16)  # LQ + mask -> 16
        assert shapes[f"feature_extractor_{3 * stages - 1}"]["op"]["kernel"].shape[-1] == 16 * 2**stages
    cond = 4 if ratio == 1 else 16 * 2**stages
    assert shapes["input_blocks_0_0"]["kernel"].shape == (3, 3, 4 + cond, 32)
    assert "input_blocks_1_1" not in shapes and "blocks_2" in shapes["input_blocks_3_1"]  # Swin only at 4x4
    assert shapes["input_blocks_3_1"]["blocks_0"]["attn"]["relative_position_bias_table"].shape == (49, 2)

    rng = np.random.default_rng(ratio)
    params = jax.tree.map(lambda a: jnp.asarray(0.2 * rng.normal(size=a.shape) + (a.ndim == 1), a.dtype), shapes)
    side = 2 * model.image_size
    x = jnp.asarray(rng.normal(size=(2, side, side, 4)), jnp.float32)
    lq = jnp.asarray(rng.uniform(-1, 1, (2, side * ratio, side * ratio, 3)), jnp.float32)
    mask = jnp.asarray(np.where(rng.random((2, side * ratio, side * ratio, 1)) < 0.3, 1.0, -1.0), jnp.float32)
    forward = jax.jit(lambda p, m: model.apply({"params": p}, x, jnp.array([0, 3]), lq=lq, mask=m))
    y = forward(params, mask)
    assert y.shape == (2, side, side, 4) and bool(jnp.all(jnp.isfinite(y)))
    assert float(jnp.max(jnp.abs(forward(params, -mask) - y))) > 1e-4  # the mask reaches the network
