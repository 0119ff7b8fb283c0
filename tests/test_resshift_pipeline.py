"""``resshift_jax.pipeline``: the restorer built once from a config (``make_restorer``), its ``sample`` section
(``sample_section``, tiling defaults) and the config checks, with the tiny fixture networks.

The networks are the fixture weights written as torch ``.pth`` files and converted with
``resshift_jax.convert.convert_checkpoint`` into orbax checkpoints, exactly as a user converts released weights.
Compilations are shared: most checks reuse one restorer (B=2, 32x32, given-noise program), ``reference`` below.
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
from resshift_fixture_utils import (REPO, converted_tiny, inpaint_setup, latent_shape, nhwc, photo, state_dict,
                                    with_sample)

from ircore.config_utils import load_config_file
from resshift_jax import convert, pipeline, sample_config, tiling
from resshift_jax.models import unet_swin, vq

ATOL_STEPS = 1e-4  # fixture README: sampling compared at atol ~1e-4 (errors compound over steps)
RTOL_NET = 1e-4
ATOL_SAME = 1e-5   # the same arithmetic in two compiled programs (XLA may fuse differently)


@pytest.fixture(scope="module")
def tiny(load_fixture, tmp_path_factory):
    """The tiny real-SR model: config (checkpoint fields set) and the params of its converted checkpoints."""
    return converted_tiny(load_fixture, tmp_path_factory.mktemp("resshift_tiny"))


@pytest.fixture(scope="module")
def restorer(tiny):
    return pipeline.make_restorer(tiny[0])


@pytest.fixture(scope="module")
def reference(tiny, restorer, load_fixture):
    """``reference(lq (B, h, w, 3), key)``: the restorer with the noises of tile 0 drawn from ``key`` given
    explicitly (one compiled program, the same one the fixture check uses)."""
    cfg, unet_params, vq_params = tiny
    steps = load_fixture("resshift/sampling_tiny")["in/step_noise"].shape[0]

    def run(lq, key):
        noises = pipeline.draw_noises(key, latent_shape(cfg, *lq.shape[:3]), steps)
        return np.asarray(restorer(lq, unet_params, vq_params, noises=noises))

    return run


def test_fixture_sampling_through_the_restorer(tiny, restorer, load_fixture):
    cfg, unet_params, vq_params = tiny
    fx = load_fixture("resshift/sampling_tiny")
    y = nhwc(fx["in/y"])
    noises = (nhwc(fx["in/noise_T"]), nhwc(fx["in/step_noise"]))
    out = restorer(y, unet_params, vq_params, noises=noises)
    want = np.clip(nhwc(fx["out/x0"]), -1.0, 1.0)  # the official sample_func clamps the decoded image
    err = float(np.max(np.abs(np.asarray(out) - want)))
    print(f"restorer vs official x0 (clamped): max abs err {err:.3g} (atol {ATOL_STEPS})")
    assert out.shape == want.shape
    np.testing.assert_allclose(np.asarray(out), want, rtol=RTOL_NET, atol=ATOL_STEPS)
    tile = max(1, min(y.shape[1:3]) // 2)  # smaller than the image: more than one tile
    with pytest.raises(ValueError, match="one tile"):
        pipeline.make_restorer(with_sample(cfg, tile_size=tile, tile_overlap=tile // 4))(
            y, unet_params, vq_params, noises=noises)


def test_one_tile_equals_untiled_inference(tiny, restorer, reference, load_fixture):
    cfg, unet_params, vq_params = tiny
    y = nhwc(load_fixture("resshift/sampling_tiny")["in/y"])
    key = jax.random.key(7)
    got = np.asarray(restorer(y, unet_params, vq_params, key))
    want = reference(y, jax.random.fold_in(key, 0))  # the noise of tile 0
    print(f"one tile vs untiled: max abs diff {np.max(np.abs(got - want)):.3g}")
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL_SAME)
    other = np.asarray(restorer(y, unet_params, vq_params, jax.random.key(8)))
    assert np.max(np.abs(other - got)) > 1e-2  # the key matters


def test_padding_for_sizes_not_a_multiple(tiny, restorer, reference, load_fixture):
    cfg, unet_params, vq_params = tiny
    y = nhwc(load_fixture("resshift/sampling_tiny")["in/y"])
    offset = cfg.padding_offset
    h, w = offset - max(1, 3 * offset // 8), offset - max(1, offset // 8)  # 20 x 28 for an offset of 32
    lq = y[:, :h, :w]
    key = jax.random.key(3)
    got = np.asarray(restorer(lq, unet_params, vq_params, key))
    sf = cfg.diffusion.sf
    assert got.shape == (2, h * sf, w * sf, 3)
    padded = np.pad(lq, ((0, 0), (0, offset - h), (0, offset - w), (0, 0)), mode="reflect")  # official F.pad
    want = reference(padded, jax.random.fold_in(key, 0))[:, : h * sf, : w * sf]
    print(f"padded pipeline vs reflect-padded reference: max abs diff {np.max(np.abs(got - want)):.3g}")
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL_SAME)


@pytest.mark.slow
def test_many_tiles_blend_per_tile_restorations(tiny, reference):
    cfg, unet_params, vq_params = tiny
    tile = cfg.padding_offset            # tiles need no padding: each is one reference run
    overlap = tile // 4
    height, width = tile + tile // 2, tile + tile // 4
    lq = np.concatenate([photo("astronaut", height, width), photo("coffee", height, width)])
    key = jax.random.key(11)
    tiled = pipeline.make_restorer(with_sample(cfg, tile_size=tile, tile_overlap=overlap, batch_size=3))
    got = np.asarray(tiled(lq, unet_params, vq_params, key))
    sf = cfg.diffusion.sf
    assert got.shape == (2, height * sf, width * sf, 3)
    assert np.all(np.isfinite(got)) and np.max(np.abs(got)) <= 1.0
    # Expected: every tile restored on its own with the noise of its index, averaged uniformly (official).
    weights, origins = tiling.blend_weights(height, width, tile, overlap, scale=sf)
    assert len(origins) == 4
    want = np.zeros_like(got, dtype=np.float64)
    for index, (r, c) in enumerate(origins):
        out = reference(lq[:, r:r + tile, c:c + tile], jax.random.fold_in(key, index))
        canvas = np.zeros_like(want)
        canvas[:, r * sf:(r + tile) * sf, c * sf:(c + tile) * sf] = out
        want += canvas * weights[index][None, :, :, None]
    err = float(np.max(np.abs(got - want)))
    print(f"{len(origins)} tiles (batch 3) vs per-tile restorations blended: max abs diff {err:.3g}")
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL_SAME)


def test_inpainting_masks_the_lq_and_pastes_known_pixels(load_fixture):
    cfg, unet_params, vq_params = inpaint_setup(load_fixture)
    restore = pipeline.make_restorer(cfg)
    side = cfg.padding_offset
    lq = photo("astronaut", side, side)
    rng = np.random.default_rng(0)
    unknown = np.zeros((1, side, side, 1), bool)
    unknown[:, side // 4: side // 2, side // 8: side // 2] = True
    unknown |= rng.random(unknown.shape) < 0.1
    mask = np.where(unknown, 1.0, -1.0).astype(np.float32)
    key = jax.random.key(5)
    out = np.asarray(restore(lq, unet_params, vq_params, key, mask=mask))
    assert out.shape == lq.shape and np.all(np.isfinite(out))
    known = ~unknown[..., 0]
    np.testing.assert_array_equal(out[0][known[0]], lq[0][known[0]])  # mask_back keeps the known pixels
    assert np.max(np.abs(out[0][~known[0]] - lq[0][~known[0]])) > 1e-2  # the hole is filled in
    # The unknown area of the LQ does not matter: it is set to -1 (training convention) before sampling.
    scribbled = np.where(unknown, rng.uniform(-1, 1, lq.shape), lq).astype(np.float32)
    out2 = np.asarray(restore(scribbled, unet_params, vq_params, key, mask=mask))
    np.testing.assert_array_equal(out2, out)
    with pytest.raises(ValueError, match="does not match the image size"):
        restore(lq, unet_params, vq_params, key, mask=mask[:, :-1])
    with pytest.raises(ValueError, match="inpainting model"):
        restore(lq, unet_params, vq_params, key)


@pytest.mark.slow
def test_face_restoration_config_with_f8_autoencoder(load_fixture):
    """The faceir config (sf 1, f8 VQ) with tiny networks: a random-init UNet and the f8 fixture VQ."""
    vfx = load_fixture("resshift/vq_tiny_f8")
    cfg = load_config_file(REPO / "configs/resshift/faceir.py")
    assert cfg.diffusion.sf == 1 and cfg.autoencoder.kind == "vq_f8"
    cfg.autoencoder.params = vfx.meta["constructor_kwargs"]
    latent_ch = cfg.autoencoder.params.embed_dim
    f = 2 ** (len(cfg.autoencoder.params.ddconfig.ch_mult) - 1)
    cfg.model.update(image_size=8, in_channels=latent_ch, out_channels=latent_ch, model_channels=32,
                     channel_mult=(1, 1), num_res_blocks=(1, 1), attention_resolutions=(8, 4),
                     num_head_channels=16, swin_embed_dim=32, window_size=4, lq_size=8 * f)
    cfg.padding_offset = cfg.model.lq_size
    unet = unet_swin.model_from_config(cfg)
    unet_params = jax.jit(lambda k: unet_swin.init_params(unet, k))(jax.random.key(0))
    vq_params = convert.convert_part_state_dict(state_dict(vfx), cfg, "autoencoder")
    restore = pipeline.make_restorer(cfg)
    lq = photo("astronaut", 50, 40)
    out = np.asarray(restore(lq, unet_params, vq_params, jax.random.key(1)))
    assert out.shape == lq.shape
    assert np.all(np.isfinite(out)) and np.max(np.abs(out)) <= 1.0 and np.std(out) > 1e-3
    with pytest.raises(ValueError, match="takes no mask"):
        restore(lq, unet_params, vq_params, jax.random.key(1), mask=np.ones_like(lq[..., :1]))


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs/resshift").glob("*.py")
                                         if p.stem not in ("degradation_realesrgan", "training")))
def test_shipped_configs_pass_the_config_check(name):
    pipeline.check_config(load_config_file(REPO / f"configs/resshift/{name}.py"))


def test_config_check_names_the_mismatch():
    cfg = load_config_file(REPO / "configs/resshift/inpaint_imagenet.py")
    ratio = cfg.model.lq_size // cfg.model.image_size
    wrong = ml_collections.ConfigDict(cfg.to_dict())
    wrong.model.lq_size = cfg.model.image_size * ratio // 2
    with pytest.raises(ValueError, match=f"model.lq_size = {ratio} \\* model.image_size") as err:
        pipeline.check_config(wrong)
    assert "\n" not in str(err.value)
    wrong = ml_collections.ConfigDict(cfg.to_dict())
    wrong.autoencoder.params.embed_dim = cfg.model.in_channels + 1
    with pytest.raises(ValueError, match=f"model.in_channels is {cfg.model.in_channels} but"):
        pipeline.check_config(wrong)
    with pytest.raises(ValueError, match=f"model.in_channels is {cfg.model.in_channels} but"):
        pipeline.make_restorer(wrong)  # the restorer checks its config once, when it is built


def test_inpainting_pipeline_with_a_one_stage_lq_extractor():
    """No fixture: an inpainting UNet whose LQ extractor has one stage (lq_size = 2 * image_size, num_heads
    with num_head_channels = -1, 4 latent channels) with a random f2 VQ, through the restorer."""
    cfg = load_config_file(REPO / "configs/resshift/inpaint_imagenet.py")
    cfg.model.update(image_size=8, in_channels=4, out_channels=4, model_channels=32, channel_mult=(1,),
                     num_res_blocks=(1,), attention_resolutions=(8,), num_heads=2, num_head_channels=-1,
                     swin_depth=1, swin_embed_dim=32, window_size=4, mlp_ratio=2.0, lq_size=16)
    cfg.autoencoder.params = {"embed_dim": 4, "n_embed": 16, "ddconfig": {
        "double_z": False, "z_channels": 4, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}
    cfg.padding_offset = 16
    pipeline.check_config(cfg)
    unet = unet_swin.model_from_config(cfg)
    rng = np.random.default_rng(0)
    unet_params = jax.tree.map(lambda a: (0.2 * rng.normal(size=a.shape) + (a.ndim == 1)).astype(np.float32),
                               unet_swin.param_shapes(unet))
    vq_params = vq.init_params(cfg.autoencoder, jax.random.key(1))
    lq = photo("astronaut", 16, 16)
    unknown = np.zeros((1, 16, 16, 1), bool)
    unknown[:, 4:12, 2:10] = True
    mask = np.where(unknown, 1.0, -1.0).astype(np.float32)
    out = np.asarray(pipeline.make_restorer(cfg)(lq, unet_params, vq_params, jax.random.key(2), mask=mask))
    assert out.shape == lq.shape and np.all(np.isfinite(out))
    known = ~unknown[0, ..., 0]
    np.testing.assert_array_equal(out[0][known], lq[0][known])
    assert np.max(np.abs(out[0][~known] - lq[0][~known])) > 1e-2


def test_bad_settings_are_refused(tiny, restorer):
    cfg, unet_params, vq_params = tiny
    lq = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="tile_overlap"):
        pipeline.make_restorer(with_sample(cfg, tile_size=8, tile_overlap=8))
    for field, value in (("tile_size", 0), ("batch_size", 0), ("tile_weighting", "cosine"), ("dtype", "int8")):
        with pytest.raises(ValueError, match=f"sample.{field}") as err:
            pipeline.make_restorer(with_sample(cfg, **{field: value}))
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="RGB"):
        restorer(lq[..., :1], unet_params, vq_params, jax.random.key(0))
    with pytest.raises(ValueError, match="PRNG key"):
        restorer(lq, unet_params, vq_params)
    no_sample = ml_collections.ConfigDict(cfg.to_dict())
    del no_sample["sample"]
    with pytest.raises(ValueError, match="no 'sample' section"):
        pipeline.make_restorer(no_sample)


def test_tile_defaults_come_from_one_place():
    assert sample_config.default_tiling(4) == (512, 64) and sample_config.default_tiling(1) == (2048, 256)
    for sf in (1, 2, 4):
        s = sample_config.sample_section(sf)
        assert (s.tile_size, s.tile_overlap) == sample_config.default_tiling(sf)
    for name in ("realsr_x4_v3", "inpaint_imagenet", "faceir"):  # the presets hold them, nothing defaults later
        cfg = load_config_file(REPO / f"configs/resshift/{name}.py")
        assert (cfg.sample.tile_size, cfg.sample.tile_overlap) == sample_config.default_tiling(cfg.diffusion.sf)
        assert cfg.sample.seed == 12345 and cfg.sample.batch_size == 1 and cfg.sample.dtype == "float32"
    embedded = load_config_file(REPO / "configs/resshift/embedded_x4.py")
    assert (embedded.sample.tile_size, embedded.sample.tile_overlap, embedded.sample.batch_size,
            embedded.sample.tile_weighting) == (16, 8, 16, "gaussian")


def test_unknown_and_mistyped_config_fields_are_errors():
    """The presets are ml_collections configs with their own checks (no hand-made type system): a locked
    preset refuses a field it does not have and a value of the wrong type, naming the field."""
    cfg = load_config_file(REPO / "configs/resshift/realsr_x4_v3.py")
    cfg.lock()
    with pytest.raises(AttributeError, match="tile_sise"):
        cfg.sample.tile_sise = 64
    with pytest.raises(AttributeError, match="sede"):
        cfg.sede = 1
    with pytest.raises(TypeError, match="seed"):
        cfg.sample.seed = "abc"
    cfg.sample.seed = 7  # a known field of the right type
    assert cfg.sample.seed == 7


@pytest.mark.slow
def test_progress_callback_runs_the_tiles_stepwise_with_the_same_result(tiny):
    """``on_tile``: one compiled call per batch of tiles from Python, reported after each; same image as the
    one-program ``lax.scan`` (same tiles, same noise indices, same blending)."""
    cfg, unet_params, vq_params = tiny
    tile = cfg.padding_offset // 2        # small tiles keep the compile cheap; each is padded to the offset
    height, width = tile + tile // 2, tile + tile // 4   # 2 x 2 tiles
    lq = photo("astronaut", height, width)
    key = jax.random.key(4)
    restore = pipeline.make_restorer(with_sample(cfg, tile_size=tile, tile_overlap=tile // 4, batch_size=3))
    assert restore.tile_count(height, width) == 4 and restore.tile_count(tile, tile) == 1
    calls = []
    stepwise = np.asarray(restore(lq, unet_params, vq_params, key, on_tile=lambda *a: calls.append(a)))
    assert calls == [(3, 4), (4, 4)]     # batch_size 3: two calls, the last one padded
    fused = np.asarray(restore(lq, unet_params, vq_params, key))
    print(f"stepwise vs lax.scan: max abs diff {np.max(np.abs(stepwise - fused)):.3g}")
    np.testing.assert_allclose(stepwise, fused, rtol=0, atol=ATOL_SAME)
    calls.clear()
    restore(lq[:, :tile, :tile], unet_params, vq_params, key, on_tile=lambda *a: calls.append(a))
    assert calls == []                   # one tile: one program, nothing to report
