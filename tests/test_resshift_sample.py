"""``resshift_jax.pipeline.restore_image`` and the ``resshift_jax.sample`` CLI with the tiny fixture networks.

The networks are the fixture weights written as torch ``.pth`` files and converted with
``resshift_jax.convert.convert_checkpoint`` into orbax checkpoints, exactly as a user converts released weights.
Compilations are shared: most checks reuse one (B=2, 32x32, given-noise) program, the ``reference`` below.
"""
from __future__ import annotations

import pathlib
import subprocess
import sys
import zlib
from typing import Any

import jax
import ml_collections
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from skimage.transform import resize as sk_resize

from ircore import checkpoints, images
from ircore.config_utils import load_config_file
from resshift_jax import convert, pipeline, sample, tiling
from resshift_jax.models import unet_swin, vq

REPO = pathlib.Path(__file__).resolve().parents[1]
ATOL_STEPS = 1e-4  # fixture README: sampling compared at atol ~1e-4 (errors compound over steps)
RTOL_NET = 1e-4
ATOL_SAME = 1e-5   # the same arithmetic in two compiled programs (XLA may fuse differently)


def nhwc(a):
    return np.moveaxis(np.asarray(a), -3, -1)


def _state(fx) -> dict[str, np.ndarray]:
    return {k[len("sd/"):]: np.asarray(fx[k]) for k in fx.files if k.startswith("sd/")}


def _pth(fx, path: pathlib.Path) -> pathlib.Path:
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in _state(fx).items()}, path)
    return path


def _photo(name: str, height: int, width: int) -> np.ndarray:
    """A real photo from skimage.data, resized, as (1, h, w, 3) float32 in [-1, 1]."""
    rgb = getattr(skdata, name)()[..., :3]
    small = sk_resize(rgb, (height, width), anti_aliasing=True)
    return (small[None] * 2.0 - 1.0).astype(np.float32)


def _latent_shape(cfg, batch: int, height: int, width: int) -> tuple[int, ...]:
    """Latent shape of an LQ image already padded to the model's multiple."""
    ae = cfg.autoencoder.params
    f = 2 ** (len(ae.ddconfig.ch_mult) - 1)
    sf = cfg.diffusion.sf
    return (batch, height * sf // f, width * sf // f, ae.embed_dim)


def _fixture_name(meta_value: str | None, default: str) -> str:
    """'unet_tiny_realsr.npz (same weights)' -> 'resshift/unet_tiny_realsr'."""
    return "resshift/" + (meta_value or default).split()[0].removesuffix(".npz")


@pytest.fixture(scope="module")
def tiny(load_fixture, tmp_path_factory):
    """The tiny real-SR model: config, converted checkpoint dirs and the params restored from them. The
    networks are the ones the sampling sidecar names (``unet_fixture`` / ``vq_fixture``)."""
    sfx = load_fixture("resshift/sampling_tiny")
    ufx, vfx = (load_fixture(_fixture_name(sfx.meta.get(field), default)) for field, default in
                (("unet_fixture", "unet_tiny_realsr"), ("vq_fixture", "vq_tiny_f4")))
    model = ufx.meta["constructor_kwargs"]
    cfg = ml_collections.ConfigDict({
        "name": "tiny_realsr",
        "model": model,
        "diffusion": sfx.meta["diffusion_kwargs"],
        "autoencoder": {"kind": "vq_f4", "dtype": "float32", "params": vfx.meta["constructor_kwargs"]},
        "padding_offset": model["lq_size"],
    })
    root = tmp_path_factory.mktemp("resshift_tiny")
    convert.convert_checkpoint(_pth(ufx, root / "unet.pth"), cfg, root / "unet")
    convert.convert_checkpoint(_pth(vfx, root / "vq.pth"), cfg, root / "autoencoder")
    return ml_collections.ConfigDict({
        "cfg": cfg, "root": str(root), "unet_dir": str(root / "unet"), "vq_dir": str(root / "autoencoder"),
    }), checkpoints.restore_params(root / "unet"), checkpoints.restore_params(root / "autoencoder")


@pytest.fixture(scope="module")
def reference(tiny, load_fixture):
    """``reference(lq (B, h, w, 3), key)``: restore_image with the noises of tile 0 drawn from ``key`` given
    explicitly (one compiled program, the same one the fixture check uses)."""
    info, unet_params, vq_params = tiny
    cfg = info.cfg
    steps = load_fixture("resshift/sampling_tiny")["in/step_noise"].shape[0]

    def run(lq, key):
        noises = pipeline.draw_noises(key, _latent_shape(cfg, *lq.shape[:3]), steps)
        return np.asarray(pipeline.restore_image(lq, unet_params, vq_params, cfg, noises=noises))

    return run


# ----------------------------------------------------------------------------------------------- pipeline
def test_fixture_sampling_through_restore_image(tiny, load_fixture):
    info, unet_params, vq_params = tiny
    fx = load_fixture("resshift/sampling_tiny")
    y = nhwc(fx["in/y"])
    out = pipeline.restore_image(y, unet_params, vq_params, info.cfg,
                                 noises=(nhwc(fx["in/noise_T"]), nhwc(fx["in/step_noise"])))
    want = np.clip(nhwc(fx["out/x0"]), -1.0, 1.0)  # the official sample_func clamps the decoded image
    err = float(np.max(np.abs(np.asarray(out) - want)))
    print(f"restore_image vs official x0 (clamped): max abs err {err:.3g} (atol {ATOL_STEPS})")
    assert out.shape == want.shape
    np.testing.assert_allclose(np.asarray(out), want, rtol=RTOL_NET, atol=ATOL_STEPS)
    tile = max(1, min(y.shape[1:3]) // 2)  # smaller than the image: more than one tile
    with pytest.raises(ValueError, match="one tile"):
        pipeline.restore_image(y, unet_params, vq_params, info.cfg, tile_size=tile, tile_overlap=tile // 4,
                               noises=(nhwc(fx["in/noise_T"]), nhwc(fx["in/step_noise"])))


def test_one_tile_equals_untiled_inference(tiny, reference, load_fixture):
    info, unet_params, vq_params = tiny
    y = nhwc(load_fixture("resshift/sampling_tiny")["in/y"])
    key = jax.random.key(7)
    got = np.asarray(pipeline.restore_image(y, unet_params, vq_params, info.cfg, key))
    want = reference(y, jax.random.fold_in(key, 0))  # the noise of tile 0
    print(f"one tile vs untiled: max abs diff {np.max(np.abs(got - want)):.3g}")
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL_SAME)
    other = np.asarray(pipeline.restore_image(y, unet_params, vq_params, info.cfg, jax.random.key(8)))
    assert np.max(np.abs(other - got)) > 1e-2  # the key matters


def test_padding_for_sizes_not_a_multiple(tiny, reference, load_fixture):
    info, unet_params, vq_params = tiny
    y = nhwc(load_fixture("resshift/sampling_tiny")["in/y"])
    offset = info.cfg.padding_offset
    h, w = offset - max(1, 3 * offset // 8), offset - max(1, offset // 8)  # 20 x 28 for an offset of 32
    lq = y[:, :h, :w]
    key = jax.random.key(3)
    got = np.asarray(pipeline.restore_image(lq, unet_params, vq_params, info.cfg, key))
    sf = info.cfg.diffusion.sf
    assert got.shape == (2, h * sf, w * sf, 3)
    padded = np.pad(lq, ((0, 0), (0, offset - h), (0, offset - w), (0, 0)), mode="reflect")  # official F.pad
    want = reference(padded, jax.random.fold_in(key, 0))[:, : h * sf, : w * sf]
    print(f"padded pipeline vs reflect-padded reference: max abs diff {np.max(np.abs(got - want)):.3g}")
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL_SAME)


@pytest.mark.slow
def test_many_tiles_blend_per_tile_restorations(tiny, reference):
    info, unet_params, vq_params = tiny
    tile = info.cfg.padding_offset            # tiles need no padding: each is one reference run
    overlap = tile // 4
    height, width = tile + tile // 2, tile + tile // 4
    lq = np.concatenate([_photo("astronaut", height, width), _photo("coffee", height, width)])
    key = jax.random.key(11)
    got = np.asarray(pipeline.restore_image(lq, unet_params, vq_params, info.cfg, key, tile_size=tile,
                                            tile_overlap=overlap, batch_size=3))
    sf = info.cfg.diffusion.sf
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


VQ_FIXTURES = ("resshift/vq_tiny_f4", "resshift/vq_tiny_f8")


def _inpaint_setup(load_fixture) -> tuple[ml_collections.ConfigDict, Any, Any]:
    """(cfg, unet_params, vq_params): the inpainting config with the tiny inpainting UNet fixture and an
    autoencoder that fits it. With sf 1 the UNet sees the LQ at lq_size / image_size times the latent size,
    so the autoencoder must down-sample by that factor and have ``in_channels`` latent channels: a VQ fixture
    when one fits, else the first VQ fixture's architecture with that many levels and channels, randomly
    initialised (the test is about masking, not about the autoencoder's numbers)."""
    ufx = load_fixture("resshift/unet_tiny_inpaint")
    cfg = load_config_file(REPO / "configs/resshift/inpaint_imagenet.py")
    cfg.model = ufx.meta["constructor_kwargs"]
    cfg.padding_offset = cfg.model.lq_size
    assert cfg.diffusion.sf == 1 and cfg.model.cond_mask
    ratio = cfg.model.lq_size // cfg.model.image_size
    channels = cfg.model.in_channels
    unet_params = convert.convert_state_dict(_state(ufx), cfg, "unet")
    for name in VQ_FIXTURES:
        vfx = load_fixture(name)
        kwargs = vfx.meta["constructor_kwargs"]
        if 2 ** (len(kwargs["ddconfig"]["ch_mult"]) - 1) == ratio and kwargs["embed_dim"] == channels:
            cfg.autoencoder.params = kwargs
            return cfg, unet_params, convert.convert_state_dict(_state(vfx), cfg, "autoencoder")
    kwargs = dict(load_fixture(VQ_FIXTURES[0]).meta["constructor_kwargs"])
    dd = dict(kwargs["ddconfig"])
    levels = int(np.log2(ratio)) + 1
    mults = list(dd["ch_mult"])[:levels]
    dd["ch_mult"] = mults + [mults[-1]] * (levels - len(mults))
    if not isinstance(dd["num_res_blocks"], int):
        dd["num_res_blocks"] = 1
    dd["attn_resolutions"] = []
    kwargs.update(ddconfig=dd, embed_dim=channels)
    cfg.autoencoder.params = kwargs
    return cfg, unet_params, vq.init_params(cfg.autoencoder, jax.random.key(0))


def test_inpainting_masks_the_lq_and_pastes_known_pixels(load_fixture):
    cfg, unet_params, vq_params = _inpaint_setup(load_fixture)
    side = cfg.padding_offset
    lq = _photo("astronaut", side, side)
    rng = np.random.default_rng(0)
    unknown = np.zeros((1, side, side, 1), bool)
    unknown[:, side // 4: side // 2, side // 8: side // 2] = True
    unknown |= rng.random(unknown.shape) < 0.1
    mask = np.where(unknown, 1.0, -1.0).astype(np.float32)
    key = jax.random.key(5)
    out = np.asarray(pipeline.restore_image(lq, unet_params, vq_params, cfg, key, mask=mask))
    assert out.shape == lq.shape and np.all(np.isfinite(out))
    known = ~unknown[..., 0]
    np.testing.assert_array_equal(out[0][known[0]], lq[0][known[0]])  # mask_back keeps the known pixels
    assert np.max(np.abs(out[0][~known[0]] - lq[0][~known[0]])) > 1e-2  # the hole is filled in
    # The unknown area of the LQ does not matter: it is set to -1 (training convention) before sampling.
    scribbled = np.where(unknown, rng.uniform(-1, 1, lq.shape), lq).astype(np.float32)
    out2 = np.asarray(pipeline.restore_image(scribbled, unet_params, vq_params, cfg, key, mask=mask))
    np.testing.assert_array_equal(out2, out)
    with pytest.raises(ValueError, match="does not match the image size"):
        pipeline.restore_image(lq, unet_params, vq_params, cfg, key, mask=mask[:, :-1])
    with pytest.raises(ValueError, match="inpainting model"):
        pipeline.restore_image(lq, unet_params, vq_params, cfg, key)


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
    vq_params = convert.convert_state_dict(_state(vfx), cfg, "autoencoder")
    lq = _photo("astronaut", 50, 40)
    out = np.asarray(pipeline.restore_image(lq, unet_params, vq_params, cfg, jax.random.key(1)))
    assert out.shape == lq.shape
    assert np.all(np.isfinite(out)) and np.max(np.abs(out)) <= 1.0 and np.std(out) > 1e-3
    with pytest.raises(ValueError, match="takes no mask"):
        pipeline.restore_image(lq, unet_params, vq_params, cfg, jax.random.key(1), mask=np.ones_like(lq[..., :1]))


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


def test_inpainting_pipeline_with_a_one_stage_lq_extractor():
    """No fixture: an inpainting UNet whose LQ extractor has one stage (lq_size = 2 * image_size, num_heads
    with num_head_channels = -1, 4 latent channels) with a random f2 VQ, through restore_image."""
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
    lq = _photo("astronaut", 16, 16)
    unknown = np.zeros((1, 16, 16, 1), bool)
    unknown[:, 4:12, 2:10] = True
    mask = np.where(unknown, 1.0, -1.0).astype(np.float32)
    out = np.asarray(pipeline.restore_image(lq, unet_params, vq_params, cfg, jax.random.key(2), mask=mask))
    assert out.shape == lq.shape and np.all(np.isfinite(out))
    known = ~unknown[0, ..., 0]
    np.testing.assert_array_equal(out[0][known], lq[0][known])
    assert np.max(np.abs(out[0][~known] - lq[0][~known])) > 1e-2


def test_bad_settings_are_refused(tiny):
    info, unet_params, vq_params = tiny
    lq = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="tile_overlap"):
        pipeline.restore_image(lq, unet_params, vq_params, info.cfg, jax.random.key(0), tile_size=8,
                               tile_overlap=8)
    with pytest.raises(ValueError, match="RGB"):
        pipeline.restore_image(lq[..., :1], unet_params, vq_params, info.cfg, jax.random.key(0))
    with pytest.raises(ValueError, match="PRNG key"):
        pipeline.restore_image(lq, unet_params, vq_params, info.cfg)
    assert pipeline.default_tiling(4) == (512, 64) and pipeline.default_tiling(1) == (2048, 256)


# ----------------------------------------------------------------------------------------------- files / CLI
def _with_checkpoints(info) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(info.cfg.to_dict())
    cfg.unet_checkpoint, cfg.autoencoder_checkpoint = info.unet_dir, info.vq_dir
    return cfg


def test_restore_files_folder_seed_skip_and_errors(tiny, tmp_path):
    info, unet_params, vq_params = tiny
    side = info.cfg.padding_offset
    src = tmp_path / "in"
    src.mkdir()
    for name in ("astronaut", "coffee"):
        images.write_png(src / f"{name}.png", _photo(name, side, side))
    (src / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    cfg = sample.with_sample_fields(_with_checkpoints(info))
    cfg.seed = 21
    messages = []
    with pytest.raises(sample.SampleError, match="1 input.*broken.png"):
        sample.restore_files(cfg, src, out, progress=False, log=messages.append)
    assert any("broken.png" in m for m in messages)
    written = sorted(p.name for p in out.iterdir())
    assert written == ["astronaut.png", "coffee.png"]
    # Each file's key comes from the seed and its name; the PNG is the rounded restore_image output.
    lq = images.read_image(src / "coffee.png")
    key = jax.random.fold_in(jax.random.key(21), zlib.crc32(b"coffee.png"))
    np.testing.assert_array_equal(jax.random.key_data(sample.image_key(21, "coffee.png")), jax.random.key_data(key))
    want = pipeline.restore_image(lq, unet_params, vq_params, cfg, key)
    got = np.asarray(Image.open(out / "coffee.png"))
    assert got.shape == (side * cfg.diffusion.sf, side * cfg.diffusion.sf, 3)
    np.testing.assert_array_equal(got, images.to_uint8(np.asarray(want)))
    # Existing outputs are kept (skipped) unless overwrite.
    (out / "coffee.png").write_bytes(b"old")
    (src / "broken.png").unlink()
    assert sample.restore_files(cfg, src, out, progress=False, log=messages.append) == []
    assert (out / "coffee.png").read_bytes() == b"old" and "skipped 2" in messages[-1]
    rewritten = sample.restore_files(cfg, src, out, overwrite=True, progress=False)
    assert len(rewritten) == 2
    np.testing.assert_array_equal(np.asarray(Image.open(out / "coffee.png")), got)  # other files don't matter


def test_restore_files_refusals(tiny, tmp_path):
    info, _, _ = tiny
    photo = tmp_path / "photo.png"
    images.write_png(photo, _photo("astronaut", 24, 20))
    cfg = _with_checkpoints(info)
    cases = [
        (dict(cfg=ml_collections.ConfigDict({**cfg.to_dict(), "unet_checkpoint": str(tmp_path / "nope")})),
         "checkpoint directory .*nope does not exist"),
        (dict(cfg=ml_collections.ConfigDict({**cfg.to_dict(), "autoencoder_checkpoint": info.unet_dir})),
         "holds the unet"),
        (dict(cfg=ml_collections.ConfigDict({**cfg.to_dict(), "seed": True})), "--config.seed=VALUE"),
        (dict(in_path=tmp_path / "missing.png"), "does not exist"),
        (dict(mask_path=photo), "takes no mask"),
    ]
    for overrides, message in cases:
        kwargs = dict(cfg=cfg, in_path=photo, out_dir=tmp_path / "out", progress=False)
        kwargs.update(overrides)
        with pytest.raises(sample.SampleError, match=message):
            sample.restore_files(**kwargs)
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "photo.png").write_bytes(b"x")
    with pytest.raises(sample.SampleError, match="exists; pass --overwrite"):
        sample.restore_files(cfg, photo, tmp_path / "out", progress=False)
    ref = ml_collections.ConfigDict({"name": "x", "model": {"a": 1}})
    assert sample.unknown_fields(ml_collections.ConfigDict(
        {"name": "x", "seed": 1, "sede": 2, "model": {"a": 1, "b": 2}}), ref) == ["model.b", "sede"]


def test_mask_file_size_mismatch(load_fixture, tmp_path):
    cfg, _, _ = _inpaint_setup(load_fixture)
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    images.write_png(photo, _photo("astronaut", 24, 20))
    images.write_png(mask, np.ones((1, 20, 20, 1), np.float32))
    networks = (None, None)  # never reached: the mask is checked before anything runs
    with pytest.raises(sample.SampleError, match="mask .* is 20x20 but image .* is 20x24"):
        sample.restore_files(cfg, photo, tmp_path / "out", mask, networks=networks, progress=False)
    with pytest.raises(sample.SampleError, match="inpainting model: pass --mask"):
        sample.restore_files(cfg, photo, tmp_path / "out", networks=networks, progress=False)
    gray = sample.read_mask(mask)
    assert gray.shape == (1, 20, 20, 1) and np.all(gray == 1.0)


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "resshift_jax.sample", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_cli_end_to_end_on_a_photo(tiny, tmp_path):
    info, _, _ = tiny
    cfg_file = tmp_path / "tiny_config.py"
    cfg_file.write_text("import ml_collections\n"
                        f"def get_config():\n    return ml_collections.ConfigDict({info.cfg.to_dict()!r})\n")
    height, width = 48, 40
    photo = tmp_path / "astronaut.png"
    images.write_png(photo, _photo("astronaut", height, width))
    out = tmp_path / "results"
    ckpts = [f"--config.unet_checkpoint={info.unet_dir}", f"--config.autoencoder_checkpoint={info.vq_dir}"]
    proc = _cli("--config", cfg_file, "--in", photo, "--out", out, *ckpts, "--config.seed=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sf = info.cfg.diffusion.sf
    with Image.open(out / "astronaut.png") as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (width * sf, height * sf)
        pixels = np.asarray(im)
    assert pixels.std() > 5  # a picture, not a constant
    assert [p.name for p in out.iterdir()] == ["astronaut.png"]  # no temporary files left

    def one_line_error(proc, message):
        assert proc.returncode == 1, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("resshift_jax.sample: error:") and message in last, proc.stderr[-2000:]

    one_line_error(_cli("--config", cfg_file, "--in", photo, "--out", out, *ckpts), "exists; pass --overwrite")
    one_line_error(_cli("--config", cfg_file, "--in", photo, "--out", tmp_path / "o2",
                        f"--config.unet_checkpoint={tmp_path / 'missing_ckpt'}",
                        f"--config.autoencoder_checkpoint={info.vq_dir}"), "does not exist")
    bad = tmp_path / "bad.png"
    bad.write_text("this is not a PNG")
    one_line_error(_cli("--config", cfg_file, "--in", bad, "--out", tmp_path / "o3", *ckpts), "unreadable image")
    one_line_error(_cli("--config", cfg_file, "--in", photo, "--out", tmp_path / "o4", *ckpts,
                        "--config.tile_sise=64"), "unknown config field(s): tile_sise")
