"""DDIM-style ``Model`` (DeqIR CelebA-HQ network) against the PyTorch fixture ``deqir/tiny_ddpm``."""
from __future__ import annotations

import importlib.util
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqir_jax import convert_keys
from deqir_jax.models import ddpm
from ircore.torch_convert import ConversionError
from conftest import REPO_ROOT

FIXTURE = "deqir/tiny_ddpm"

# Ho et al. 2020 (DDPM), Appendix B: "our LSUN and CelebA-HQ models have 114 million parameters" -- the same
# 256x256 architecture (ch 128, ch_mult 1,1,2,2,4,4, 2 res blocks, attention at 16) as the SDEdit checkpoint.
PUBLISHED_256_PARAMS_MILLIONS = 114


def _tolerance(meta: dict) -> tuple[float, float]:
    text = meta["tolerance"]
    atol = re.search(r"atol\s+([0-9.eE+-]+)", text)
    rtol = re.search(r"rtol\s+([0-9.eE+-]+)", text)
    assert atol and rtol, f"cannot read atol/rtol from sidecar tolerance {text!r}"
    return float(atol.group(1)), float(rtol.group(1))


def _model_cfg(meta: dict) -> dict:
    cfg = dict(meta["config"]["model"])
    cfg["image_size"] = meta["config"]["data"]["image_size"]
    cfg["arch"] = "ddpm"
    return cfg


def _torch_state(fx) -> dict[str, np.ndarray]:
    return {k[len("param/"):]: fx[k] for k in fx.files if k.startswith("param/")}


def _nchw(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def _count(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


def analytic_param_count(cfg: dict) -> int:
    """Parameter count of the DDIM ``Model`` from its layer formulas (written independently of the Flax code)."""
    ch, mult, nrb = cfg["ch"], list(cfg["ch_mult"]), cfg["num_res_blocks"]
    attn_res, res = set(cfg["attn_resolutions"]), cfg["image_size"]
    temb = 4 * ch

    def resblock(cin: int, cout: int) -> int:
        n = 2 * cin + (9 * cin * cout + cout) + (temb * cout + cout) + 2 * cout + (9 * cout * cout + cout)
        return n + (cin * cout + cout if cin != cout else 0)

    def attn(c: int) -> int:
        return 2 * c + 4 * (c * c + c)

    def conv3(c: int) -> int:  # the resampling conv, absent without resamp_with_conv
        return 9 * c * c + c if cfg.get("resamp_with_conv", True) else 0

    n = (ch * temb + temb) + (temb * temb + temb) + (9 * cfg["in_channels"] * ch + ch)
    skips, c = [ch], ch
    for level, m in enumerate(mult):
        for _ in range(nrb):
            n, c = n + resblock(c, ch * m), ch * m
            n += attn(c) if res in attn_res else 0
            skips.append(c)
        if level != len(mult) - 1:
            n, res = n + conv3(c), res // 2
            skips.append(c)
    n += 2 * resblock(c, c) + attn(c)
    for level in reversed(range(len(mult))):
        for _ in range(nrb + 1):
            n, c = n + resblock(c + skips.pop(), ch * mult[level]), ch * mult[level]
            n += attn(c) if res in attn_res else 0
        if level != 0:
            n, res = n + conv3(c), res * 2
    return n + 2 * c + 9 * c * cfg["out_ch"] + cfg["out_ch"]


@pytest.fixture(scope="module")
def tiny(load_fixture):
    fx = load_fixture(FIXTURE)
    cfg = _model_cfg(fx.meta)
    params = convert_keys.convert_ddpm_state_dict(_torch_state(fx), cfg)
    model = ddpm.model_from_config(cfg)
    run = jax.jit(lambda p, x, t: ddpm.apply_with_activations(model, p, x, t))
    x = jnp.asarray(fx["x"].transpose(0, 2, 3, 1))
    out, acts = run(params, x, jnp.asarray(fx["timesteps"]))
    return fx, cfg, params, model, out, acts


def test_param_count_matches_sidecar(tiny):
    fx, cfg, params, *_ = tiny
    assert _count(params) == fx.meta["n_params"]
    assert analytic_param_count(cfg) == fx.meta["n_params"]
    assert all(leaf.dtype == np.float32 for leaf in jax.tree_util.tree_leaves(params))


def test_embeddings_match(tiny):
    fx, _, _, _, _, acts = tiny
    atol, rtol = _tolerance(fx.meta)
    for key in ("temb_sinusoidal", "emb"):
        np.testing.assert_allclose(np.asarray(acts[key]), fx[key], atol=atol, rtol=rtol, err_msg=key)


def test_every_block_activation_matches(tiny):
    fx, _, _, _, _, acts = tiny
    atol, rtol = _tolerance(fx.meta)
    order = fx.meta["activation_order"]
    recorded = {"h/" + name for name in acts if name not in ("temb_sinusoidal", "emb")}
    assert recorded == set(order)
    for key in order:
        np.testing.assert_allclose(_nchw(acts[key[len("h/"):]]), fx[key], atol=atol, rtol=rtol, err_msg=key)


def test_output_matches(tiny):
    fx, _, _, _, out, _ = tiny
    atol, rtol = _tolerance(fx.meta)
    assert out.shape == fx["x"].transpose(0, 2, 3, 1).shape[:3] + (fx["out"].shape[1],)
    np.testing.assert_allclose(_nchw(out), fx["out"], atol=atol, rtol=rtol)


def test_bfloat16_compute_stays_close(tiny):
    fx, cfg, params, _, out32, _ = tiny
    model = ddpm.model_from_config({**cfg, "dtype": "bfloat16"})
    x = jnp.asarray(fx["x"].transpose(0, 2, 3, 1))
    out16 = jax.jit(model.apply)({"params": params}, x, jnp.asarray(fx["timesteps"]))
    assert out16.dtype == jnp.bfloat16
    rel = float(jnp.linalg.norm(out16.astype(jnp.float32) - out32) / jnp.linalg.norm(out32))
    assert rel < 5e-2, rel


def test_wrong_input_size_raises(tiny):
    fx, _, params, model, _, _ = tiny
    size = model.image_size
    t = jnp.asarray(fx["timesteps"])
    channels = fx["x"].shape[1]
    batch = t.shape[0]
    for shape in [(batch, size // 2, size // 2, channels), (batch, size, size + 2, channels),
                  (batch, size, size, channels + 1)]:
        with pytest.raises(ValueError, match="configured for"):
            model.apply({"params": params}, jnp.zeros(shape), t)
    with pytest.raises(ValueError, match="timesteps must have shape"):
        model.apply({"params": params}, jnp.zeros((batch, size, size, channels)), jnp.concatenate([t, t]))


def test_converter_is_strict(load_fixture):
    fx = load_fixture(FIXTURE)
    cfg = _model_cfg(fx.meta)
    state = _torch_state(fx)
    missing = dict(state)
    del missing["mid.attn_1.q.weight"]
    with pytest.raises(ConversionError, match="mid_attn_1/q/kernel"):
        convert_keys.convert_ddpm_state_dict(missing, cfg)
    extra = {**state, "logvar": np.zeros(1000, np.float32)}
    with pytest.raises(ConversionError, match="logvar"):
        convert_keys.convert_ddpm_state_dict(extra, cfg)


def _released_config():
    path = REPO_ROOT / "configs" / "deqir" / "models" / "celeba_hq.py"
    spec = importlib.util.spec_from_file_location("celeba_hq_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_released_config_matches_sidecar_and_parameter_count(load_fixture):
    cfg = _released_config()
    assert cfg.checkpoint_name == "celeba_hq.ckpt"
    released = load_fixture(FIXTURE).meta["released_config_model_section"]
    for key in ("ch", "num_res_blocks", "image_size", "in_channels", "out_ch", "dropout", "resamp_with_conv"):
        assert cfg.model[key] == released[key], key
    assert list(cfg.model.ch_mult) == released["ch_mult"]
    assert list(cfg.model.attn_resolutions) == released["attn_resolutions"]
    n = _count(ddpm.param_shapes(cfg.model))
    assert n == analytic_param_count(cfg.model.to_dict())
    assert round(n / 1e6) == PUBLISHED_256_PARAMS_MILLIONS
