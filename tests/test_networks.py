"""``resshift_jax.networks``: the UNet / VQ modules of a config and the functions the diffusion calls
(``model_fn``, ``first_stage``), shared by sampling and training. Shapes come from the fixture sidecars."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from resshift_fixture_utils import REPO, nhwc, state_dict, tiny_config, tiny_fixtures

from ircore.config_utils import load_config_file
from resshift_jax import convert_keys, diffusion, networks, pipeline
from resshift_jax.models import unet_swin, vq
from resshift_jax.schedule import schedule_from_config


@pytest.fixture(scope="module")
def tiny(load_fixture):
    """(cfg, unet_params, vq_params) of the tiny latent model the sampling fixture was recorded with."""
    _, ufx, vfx = tiny_fixtures(load_fixture)
    cfg = tiny_config(load_fixture)
    return (cfg, convert_keys.convert_unet_state_dict(state_dict(ufx), cfg.model),
            convert_keys.convert_vq_state_dict(state_dict(vfx), cfg.autoencoder))


def _random_inputs(model: unet_swin.UNetModelSwin, seed: int = 0):
    inputs = unet_swin.dummy_inputs(model, batch=2)
    keys = jax.random.split(jax.random.key(seed), 2)
    x = jax.random.normal(keys[0], inputs["x"].shape)
    lq = jnp.tanh(jax.random.normal(keys[1], inputs["lq"].shape))
    return x, jnp.asarray([0, 1], jnp.int32), lq


def test_modules_and_dtypes_by_name(tiny):
    cfg, _, _ = tiny
    assert networks.unet(cfg).dtype == jnp.float32
    assert networks.unet(cfg, "bfloat16").dtype == jnp.bfloat16
    assert networks.autoencoder(cfg).dtype == jnp.dtype(cfg.autoencoder.dtype)  # the section's own dtype
    assert networks.autoencoder(cfg, "float16").dtype == jnp.float16
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        networks.unet(cfg, "float8")
    assert networks.autoencoder(load_config_file(REPO / "configs/resshift/embedded_x4.py")) is None  # pixel space


@pytest.mark.slow
def test_model_fn_is_the_unet_on_its_condition(tiny):
    cfg, unet_params, _ = tiny
    net, sched = networks.unet(cfg), schedule_from_config(cfg.diffusion)
    x, t, lq = _random_inputs(net)
    got = networks.model_fn(net, unet_params, sched, pixel_space=False)(x, t, (lq, None))
    want = net.apply({"params": unet_params}, x, t, lq=lq, mask=None)
    assert got.dtype == jnp.float32 and got.shape == x.shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # a pixel-space model sees the bicubic-upsampled LQ (the condition at the output size)
    pixel = networks.model_fn(net, unet_params, sched, pixel_space=True)
    small = lq[:, ::sched.sf, ::sched.sf] if sched.sf > 1 else lq
    want = net.apply({"params": unet_params}, x, t, lq=diffusion.upsample_lq(sched, small), mask=None)
    np.testing.assert_array_equal(np.asarray(pixel(x, t, (small, None))), np.asarray(want))


def test_first_stage_encodes_and_decodes_in_float32(tiny):
    cfg, _, vq_params = tiny
    assert networks.first_stage(None, None) == (None, None)
    ae = networks.autoencoder(cfg)
    f = ae.downsampling_factor
    img = jnp.tanh(jax.random.normal(jax.random.key(1), (1, 4 * f, 4 * f, ae.in_channels)))
    encode, decode = networks.first_stage(ae, vq_params)
    z = encode(img)
    np.testing.assert_array_equal(np.asarray(z), np.asarray(ae.apply({"params": vq_params}, img,
                                                                      method=vq.VQModel.encode)))
    np.testing.assert_array_equal(np.asarray(decode(z)), np.asarray(ae.apply({"params": vq_params}, z,
                                                                             method=vq.VQModel.decode)))
    half = networks.autoencoder(cfg, "bfloat16")
    encode, decode = networks.first_stage(half, vq_params)
    assert encode(img).dtype == jnp.float32 and decode(z).dtype == jnp.float32  # the diffusion runs in float32


@pytest.mark.slow
def test_restorer_is_restore_lq_on_these_networks(tiny, load_fixture):
    """The pipeline's restorer (one tile) is ``diffusion.restore_lq`` with networks.py's functions."""
    cfg, unet_params, vq_params = tiny
    fx = load_fixture("resshift/sampling_tiny")
    y = jnp.asarray(nhwc(fx["in/y"]))
    noise_T, step_noises = jnp.asarray(nhwc(fx["in/noise_T"])), jnp.asarray(nhwc(fx["in/step_noise"]))
    got = pipeline.make_restorer(cfg)(y, unet_params, vq_params, noises=(noise_T, step_noises))
    sched = schedule_from_config(cfg.diffusion)
    model_fn = networks.model_fn(networks.unet(cfg), unet_params, sched, pixel_space=False)
    encode, decode = networks.first_stage(networks.autoencoder(cfg), vq_params)
    want = jax.jit(lambda y, a, b: diffusion.restore_lq(
        model_fn, sched, y, encode_fn=encode, decode_fn=decode, noise_T=a, step_noises=b, cond=(y, None),
        pad_multiple=cfg.padding_offset))(y, noise_T, step_noises)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)
