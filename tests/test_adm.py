"""guided-diffusion ADM UNet: parity with the PyTorch fixture ``deqir/tiny_unet`` and the released configs.

The fixture's weights go through :func:`deqir_jax.convert_keys.convert_adm_state_dict` (the function a user
runs on ``256x256_diffusion_uncond.pt``); the model is built from the sidecar's ``constructor_kwargs``.
Fixture arrays are NCHW, the model is NHWC: transposed here only.
"""
from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqir_jax import convert_keys
from deqir_jax.models import adm
from ircore.config_utils import load_config_file
from ircore.layers import count_params
from ircore.torch_convert import ConversionError

FIXTURE = "deqir/tiny_unet"
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs" / "deqir" / "models"

# Reduced-precision runs against the float32 PyTorch output. Measured on the tiny fixture: bfloat16 gives a
# relative Frobenius error of 5.3e-3 (max abs 0.019 on outputs of magnitude up to 3.4), float16 6.9e-4.
# Bounds: about 4x the measured errors.
REDUCED_PRECISION_REL_ERR = {"bfloat16": 2e-2, "float16": 3e-3}


def _tolerance(meta: dict) -> tuple[float, float]:
    """(atol, rtol) from the sidecar. Its ``tolerance`` is a sentence such as
    ``"float32: out/eps atol 1e-4 rtol 1e-4 ..."`` (or a dict with ``atol``/``rtol``)."""
    tol = meta["tolerance"]
    if isinstance(tol, dict):
        return float(tol["atol"]), float(tol["rtol"])
    atol = re.search(r"atol\s*([0-9.eE+-]+)", tol)
    rtol = re.search(r"rtol\s*([0-9.eE+-]+)", tol)
    if not (atol and rtol):
        raise ValueError(f"cannot read atol/rtol from the sidecar tolerance {tol!r}")
    return float(atol.group(1)), float(rtol.group(1))


def _nchw(a) -> np.ndarray:
    a = np.asarray(jnp.asarray(a, jnp.float32))
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def _state(fx) -> dict[str, np.ndarray]:
    return {k[len("param/"):]: fx[k] for k in fx.files if k.startswith("param/")}


@pytest.fixture(scope="module")
def tiny(load_fixture):
    fx = load_fixture(FIXTURE)
    cfg = adm.config_from_create_model_kwargs(fx.meta["constructor_kwargs"])
    params = convert_keys.convert_adm_state_dict(_state(fx), cfg)
    x = jnp.asarray(fx["x"].transpose(0, 2, 3, 1))
    t = jnp.asarray(fx["timesteps"])
    return fx, cfg, params, x, t


@pytest.fixture(scope="module")
def tiny_outputs(tiny):
    fx, cfg, params, x, t = tiny
    model = adm.model_from_config(cfg)
    out, acts = jax.jit(lambda p, x, t: adm.apply_with_activations(model, p, x, t))(params, x, t)
    return out, acts


def test_param_count_matches_sidecar(tiny):
    fx, cfg, params, _, _ = tiny
    assert count_params(params) == fx.meta["n_params"]
    assert count_params(adm.init_params_shapes(cfg)) == fx.meta["n_params"]
    assert all(leaf.dtype == np.float32 for leaf in jax.tree_util.tree_leaves(params))


def test_embeddings_match(tiny, tiny_outputs):
    fx = tiny[0]
    atol, rtol = _tolerance(fx.meta)
    _, acts = tiny_outputs
    np.testing.assert_allclose(_nchw(acts["temb_sinusoidal"]), fx["temb_sinusoidal"], atol=atol, rtol=rtol)
    np.testing.assert_allclose(_nchw(acts["emb"]), fx["emb"], atol=atol, rtol=rtol)


def test_every_block_output_matches(tiny, tiny_outputs):
    fx = tiny[0]
    atol, rtol = _tolerance(fx.meta)
    _, acts = tiny_outputs
    names = sorted(k for k in fx.files if k.startswith(("h_in/", "h_out/")) or k == "h_mid")
    assert names, "fixture holds no block outputs"
    assert set(names) == {k for k in acts if k.startswith("h_")}
    errors = {}
    for name in names:
        got, ref = _nchw(acts[name]), fx[name]
        assert got.shape == ref.shape, f"{name}: {got.shape} vs {ref.shape}"
        if not np.allclose(got, ref, atol=atol, rtol=rtol):
            errors[name] = float(np.max(np.abs(got - ref)))
    assert not errors, f"block outputs off (max abs error): {errors}"


def test_output_matches(tiny, tiny_outputs):
    fx = tiny[0]
    atol, rtol = _tolerance(fx.meta)
    out, _ = tiny_outputs
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(_nchw(out), fx["out"], atol=atol, rtol=rtol)
    np.testing.assert_allclose(_nchw(out)[:, :3], fx["eps"], atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", sorted(REDUCED_PRECISION_REL_ERR))
def test_reduced_precision_stays_close(tiny, dtype):
    fx, cfg, params, x, t = tiny
    low = dict(cfg)
    low["dtype"] = dtype
    model = adm.model_from_config(low)
    out = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))(params, x, t)
    assert out.dtype == jnp.float32
    ref = fx["out"]
    rel = np.linalg.norm(_nchw(out) - ref) / np.linalg.norm(ref)
    assert rel < REDUCED_PRECISION_REL_ERR[dtype], f"{dtype}: relative error {rel:.2e}"
    assert rel > 0  # the low-precision path really ran in low precision


def test_imagenet256_uncond_has_released_parameter_count():
    cfg = load_config_file(CONFIG_DIR / "imagenet256_uncond.py")
    assert cfg.checkpoint_name == "256x256_diffusion_uncond.pt"
    shapes = adm.init_params_shapes(cfg.model)
    assert count_params(shapes) == 552_814_086
    model = adm.model_from_config(cfg.model)
    assert model.out_channels == 6 and model.attention_resolutions == (8, 16, 32)
    assert model.channel_mult == (1, 1, 2, 2, 4, 4) and model.dtype == jnp.float16


@pytest.mark.parametrize(
    "name, count",
    [("imagenet256_cond.py", 552_814_086 + 1000 * 1024), ("lsun_bedroom256.py", 552_814_086)],
)
def test_related_configs_build(name, count):
    cfg = load_config_file(CONFIG_DIR / name)
    assert count_params(adm.init_params_shapes(cfg)) == count


# ----------------------------------------------------------------------------------------------- corruption
def test_renamed_key_is_reported(tiny):
    fx, cfg = tiny[0], tiny[1]
    state = _state(fx)
    state["middle_block.1.qkv_renamed.weight"] = state.pop("middle_block.1.qkv.weight")
    with pytest.raises(ConversionError) as err:
        convert_keys.convert_adm_state_dict(state, cfg)
    assert "middle_block.1.qkv_renamed.weight" in str(err.value)
    assert "middle_block_1/qkv/kernel" in str(err.value)


def test_missing_key_is_reported(tiny):
    """Deletes the last ResBlock embedding bias of this configuration (the name depends on num_res_blocks,
    attention levels and resblock_updown) and expects the error to name its Flax path."""
    fx, cfg = tiny[0], tiny[1]
    state = _state(fx)
    candidates = [k for k in state if k.startswith("output_blocks.") and k.endswith(".emb_layers.1.bias")]
    assert candidates, "the fixture state dict holds no output-block ResBlock"
    victim = max(candidates, key=lambda k: [int(p) if p.isdigit() else -1 for p in k.split(".")])
    del state[victim]
    victim_path = "/".join(convert_keys.adm_torch_key_to_path(victim))
    with pytest.raises(ConversionError, match=re.escape(victim_path)):
        convert_keys.convert_adm_state_dict(state, cfg)


def test_wrong_shape_is_reported(tiny):
    fx, cfg = tiny[0], tiny[1]
    state = _state(fx)
    state["input_blocks.0.0.weight"] = state["input_blocks.0.0.weight"][:, :2]
    with pytest.raises(ConversionError, match=r"input_blocks\.0\.0\.weight .*input_blocks_0_0/kernel"):
        convert_keys.convert_adm_state_dict(state, cfg)


def test_class_conditional_config_needs_label_embedding(tiny):
    fx, cfg = tiny[0], tiny[1]
    cond = dict(cfg)
    cond["class_cond"] = True
    with pytest.raises(ConversionError, match="label_emb/embedding"):
        convert_keys.convert_adm_state_dict(_state(fx), cond)


# ----------------------------------------------------------------------------------------------- other options
SMALL = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2,2",
             attention_resolutions="4", num_heads=2, resblock_updown=False, learn_sigma=False)


def test_torch_names_of_conv_resampling_and_labels():
    """Key names of guided-diffusion's Downsample (``op``) / Upsample (``conv``) / ``label_emb`` land on
    existing parameters (layout of the non-``resblock_updown`` UNet, attention at ds 2)."""
    shapes = adm.init_params_shapes(adm.guided_diffusion_model_config(class_cond=True, **SMALL))
    from flax import traverse_util

    flat = traverse_util.flatten_dict(shapes)
    expected = {
        "label_emb.weight": (1000, 128),
        "input_blocks.2.0.op.weight": (3, 3, 32, 32),
        "input_blocks.3.0.skip_connection.weight": (1, 1, 32, 64),
        "input_blocks.3.1.qkv.weight": (64, 192),
        "input_blocks.4.0.op.bias": (64,),
        "output_blocks.1.1.conv.weight": (3, 3, 64, 64),
        "output_blocks.3.1.proj_out.weight": (64, 64),
        "output_blocks.3.2.conv.weight": (3, 3, 64, 64),
        "out.0.weight": (32,),
        "out.2.weight": (3, 3, 32, 3),
    }
    for key, shape in expected.items():
        path = convert_keys.adm_torch_key_to_path(key)
        assert path in flat, f"{key} -> {path} not in the model"
        assert tuple(flat[path].shape) == shape, key


def _random_params(cfg, seed: int):
    """Random non-zero parameters of the configured shapes (zero-initialised output convs would hide effects)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: (0.2 * rng.normal(size=s.shape) + (1.0 if len(s.shape) == 1 else 0.0)).astype(np.float32),
        adm.init_params_shapes(cfg),
    )


# Smallest UNet with every kind of block, for behaviour checks that compile the model.
MINI = dict(image_size=4, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="2",
            num_heads=2, learn_sigma=False)


def test_class_label_enters_embedding():
    cfg = adm.guided_diffusion_model_config(class_cond=True, **MINI)
    model = adm.model_from_config(cfg)
    params = _random_params(cfg, 0)
    x, t, _ = adm.dummy_inputs(model, batch=2)
    y = jnp.array([3, 7])
    _, acts = jax.jit(lambda p: adm.apply_with_activations(model, p, x, t, y))(params)
    table = params["label_emb"]["embedding"]
    np.testing.assert_allclose(acts["emb"][1] - acts["emb"][0], table[7] - table[3], atol=1e-5)
    with pytest.raises(ValueError, match="class-conditional"):
        jax.eval_shape(lambda: model.apply({"params": params}, x, t))


def test_dropout_only_in_training():
    cfg = adm.guided_diffusion_model_config(dropout=0.5, **MINI)
    model = adm.model_from_config(cfg)
    params = _random_params(cfg, 1)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 4, 3))
    t = jnp.array([10])
    run = jax.jit(lambda p, train, rng: model.apply({"params": p}, x, t, train=train, rngs={"dropout": rng}),
                  static_argnums=1)
    eval_a = run(params, False, jax.random.PRNGKey(3))
    eval_b = run(params, False, jax.random.PRNGKey(4))
    train = run(params, True, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(eval_a, eval_b)
    assert float(jnp.max(jnp.abs(train - eval_a))) > 1e-3


def test_bad_inputs_and_configs_raise():
    model = adm.model_from_config(adm.guided_diffusion_model_config(**SMALL))
    x, t, _ = adm.dummy_inputs(model, batch=2)
    params = adm.init_params_shapes(adm.guided_diffusion_model_config(**SMALL))
    with pytest.raises(ValueError, match="timesteps must have shape"):
        jax.eval_shape(lambda: model.apply({"params": params}, x, jnp.zeros((3,))))
    with pytest.raises(ValueError, match="divisible by 4"):
        jax.eval_shape(lambda: model.apply({"params": params}, jnp.zeros((1, 10, 8, 3)), jnp.zeros((1,))))
    with pytest.raises(ValueError, match="unknown ADM config field"):
        adm.model_from_config({**SMALL, "num_chanels": 3})
    with pytest.raises(ValueError, match="dtype"):
        adm.model_from_config({**SMALL, "dtype": "float64"})
    with pytest.raises(ValueError, match="no default channel_mult"):
        adm.model_from_config({**SMALL, "channel_mult": "", "image_size": 24})
