"""ResShift VQ autoencoder (``resshift_jax.models.vq``) against the official ``VQModelTorch`` fixtures.

Each fixture (``resshift/vq_tiny_f4``, ``resshift/vq_tiny_f8``) gives the constructor kwargs, the state dict,
an input image and the official ``encode`` / ``quantize`` / ``decode`` outputs (NCHW). Weights go through
``resshift_jax.convert_keys.convert_vq_state_dict``, the function users run on released checkpoints.
"""
from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ircore.config_utils import load_config_file
from ircore.layers import count_params
from ircore.torch_convert import ConversionError
from resshift_jax import convert_keys
from resshift_jax.models import vq

FIXTURES = ["resshift/vq_tiny_f4", "resshift/vq_tiny_f8"]
RTOL = ATOL = 1e-4  # fixture README: networks at rtol/atol 1e-4 in float32
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs" / "resshift" / "autoencoders"


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (0, 2, 3, 1))


def state_dict(fx) -> dict[str, np.ndarray]:
    return {k[len("sd/"):]: fx[k] for k in fx.files if k.startswith("sd/")}


@functools.lru_cache(maxsize=None)
def _jitted(model: vq.VQModel):
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=vq.VQModel.encode))
    quantize = jax.jit(lambda p, z: model.apply({"params": p}, z, method=vq.VQModel.quantize))
    decode = jax.jit(
        lambda p, z, nq: model.apply({"params": p}, z, nq, method=vq.VQModel.decode), static_argnums=2
    )
    return encode, quantize, decode


@pytest.fixture(scope="module", params=FIXTURES)
def run(request, load_fixture):
    """Converted params and every port output for one fixture."""
    fx = load_fixture(request.param)
    cfg = fx.meta["constructor_kwargs"]
    params = convert_keys.convert_vq_state_dict(state_dict(fx), cfg)
    model = vq.model_from_config(cfg)
    encode, quantize, decode = _jitted(model)
    z = encode(params, nhwc(fx["in/x"]))
    zq, idx = quantize(params, z)
    out = {
        "encode": z,
        "quant": zq,
        "quant_indices": idx,
        "decode": decode(params, z, False),
        "decode_no_quant": decode(params, z, True),
        "decode_z_rand": decode(params, nhwc(fx["in/z_rand"]), False),
    }
    return fx, cfg, params, {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("key", ["encode", "quant", "decode", "decode_no_quant", "decode_z_rand"])
def test_outputs_match_official(run, key):
    fx, _, _, out = run
    expected = nhwc(fx[f"out/{key}"])
    assert out[key].shape == expected.shape
    assert out[key].dtype == np.float32
    np.testing.assert_allclose(out[key], expected, rtol=RTOL, atol=ATOL, err_msg=f"{fx.path.name}: {key}")


def test_quant_indices_exact(run):
    fx, _, _, out = run
    expected = fx["out/quant_indices"]
    assert out["quant_indices"].dtype == np.int32
    assert out["quant_indices"].shape == expected.shape
    np.testing.assert_array_equal(out["quant_indices"], expected)


def test_quant_margins_match(run):
    """Second-best minus best codebook distance per latent pixel, from the port's latent and codebook."""
    fx, _, params, out = run
    codebook = np.asarray(params["codebook"]["embedding"], np.float64)
    flat = out["encode"].astype(np.float64).reshape(-1, codebook.shape[1])
    dist = ((flat[:, None, :] - codebook[None]) ** 2).sum(-1)
    two = np.sort(dist, axis=1)[:, :2]
    np.testing.assert_allclose(two[:, 1] - two[:, 0], fx["out/quant_margin"], atol=ATOL)


def test_param_count_matches_sidecar(run):
    fx, cfg, params, _ = run
    assert count_params(params) == fx.meta["n_params"]
    assert count_params(vq.param_shapes(cfg)) == fx.meta["n_params"]
    assert all(leaf.dtype == np.float32 for leaf in jax.tree_util.tree_leaves(params))


def test_key_mapping_round_trips(run):
    fx, _, _, _ = run
    for key in state_dict(fx):
        assert convert_keys.vq_path_to_torch_key(convert_keys.vq_torch_key_to_path(key)) == key


def test_missing_key_is_named(run):
    fx, cfg, _, _ = run
    state = state_dict(fx)
    dropped = sorted(k for k in state if k.startswith("decoder.up."))[0]
    del state[dropped]
    with pytest.raises(ConversionError, match=dropped.replace(".", r"\.")):
        convert_keys.convert_vq_state_dict(state, cfg)


def test_unknown_key_rejected_and_loss_keys_ignored(run):
    fx, cfg, params, _ = run
    state = state_dict(fx)
    state["loss.discriminator.main.0.weight"] = np.zeros((4, 3, 4, 4), np.float32)
    converted = convert_keys.convert_vq_state_dict(state, cfg)
    assert count_params(converted) == count_params(params)
    state["encoder.extra.weight"] = np.zeros((3,), np.float32)
    with pytest.raises(ConversionError, match=r"encoder\.extra\.weight"):
        convert_keys.convert_vq_state_dict(state, cfg)


def test_bfloat16_compute_keeps_float32_params(run):
    fx, cfg, params, out = run
    model = vq.model_from_config(cfg, dtype="bfloat16")
    assert model.dtype == jnp.bfloat16
    dec = jax.jit(lambda p, z: model.apply({"params": p}, z, True, method=vq.VQModel.decode))(
        params, out["encode"])
    assert dec.dtype == jnp.bfloat16
    ref = nhwc(fx["out/decode_no_quant"])
    err = np.abs(np.asarray(dec, np.float32) - ref).max()
    assert err < 0.05 * np.abs(ref).max(), err


def test_bad_inputs_raise(run):
    fx, cfg, params, _ = run
    model = vq.model_from_config(cfg)
    x = nhwc(fx["in/x"])
    with pytest.raises(ValueError, match="channels"):
        model.apply({"params": params}, x[..., :-1], method=vq.VQModel.encode)
    with pytest.raises(ValueError, match="NHWC"):
        model.apply({"params": params}, x[0], method=vq.VQModel.decode)
    with pytest.raises(ValueError, match="channels"):
        model.apply({"params": params}, np.zeros((1, 4, 4, cfg["embed_dim"] + 1), np.float32),
                    method=vq.VQModel.quantize)
    too_many = [1] * (len(cfg["ddconfig"]["ch_mult"]) + 1)  # one entry per level is required
    bad = {**cfg, "ddconfig": {**cfg["ddconfig"], "num_res_blocks": too_many}}
    with pytest.raises(ValueError, match="num_res_blocks"):
        vq.model_from_config(bad)
    bad = {**cfg, "ddconfig": {**cfg["ddconfig"], "double_z": True}}
    with pytest.raises(ValueError, match="double_z"):
        vq.model_from_config(bad)


@pytest.mark.parametrize(
    "file,arg,expected",
    [("vq_f4.py", None, 55_322_782), ("vq_f4.py", "face", 55_322_782), ("vq_f8.py", None, 77_009_115)],
)
def test_released_config_param_count(file, arg, expected):
    cfg = load_config_file(CONFIG_DIR / file, arg)
    shapes = vq.param_shapes(cfg)
    assert count_params(shapes) == expected
    assert shapes["codebook"]["embedding"].shape == (cfg.params.n_embed, cfg.params.embed_dim)
