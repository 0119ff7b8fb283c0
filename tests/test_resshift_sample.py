"""``resshift_jax.sample``: ``restore_lq_images`` (the command from Python) and the CLI, with the tiny fixture
networks converted into orbax checkpoints exactly as a user converts released weights."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import zlib

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image
from resshift_fixture_utils import REPO, converted_tiny, inpaint_setup, photo

from ircore import images
from resshift_jax import pipeline, sample


@pytest.fixture(scope="module")
def tiny(load_fixture, tmp_path_factory):
    """The tiny real-SR model: config (checkpoint fields set) and the params of its converted checkpoints."""
    return converted_tiny(load_fixture, tmp_path_factory.mktemp("resshift_tiny"))


def _copy(cfg: ml_collections.ConfigDict, **changes) -> ml_collections.ConfigDict:
    copy = ml_collections.ConfigDict(cfg.to_dict())
    copy.update(changes)
    return copy


def test_restore_lq_images_folder_seed_skip_reference_and_errors(tiny, tmp_path):
    base, unet_params, vq_params = tiny
    side = base.padding_offset
    src = tmp_path / "in"
    src.mkdir()
    for name in ("astronaut", "coffee"):
        images.write_png(src / f"{name}.png", photo(name, side, side))
    (src / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    cfg = _copy(base, input=str(src), output=str(out))
    cfg.sample.seed = 21
    messages = []
    with pytest.raises(sample.SampleError, match="1 input.*failed.*broken.png"):
        sample.restore_lq_images(cfg, progress=False, log=messages.append)
    assert any("broken.png" in m for m in messages)
    written = sorted(p.name for p in out.iterdir())
    assert written == ["astronaut.png", "coffee.png"]
    # Each file's key comes from the seed and its name; the PNG is the rounded output of the config's restorer.
    lq = images.read_image(src / "coffee.png")
    key = jax.random.fold_in(jax.random.key(21), zlib.crc32(b"coffee.png"))
    np.testing.assert_array_equal(jax.random.key_data(sample.image_key(21, "coffee.png")), jax.random.key_data(key))
    want = np.asarray(pipeline.make_restorer(cfg)(lq, unet_params, vq_params, key))
    got = np.asarray(Image.open(out / "coffee.png"))
    assert got.shape == (side * cfg.diffusion.sf, side * cfg.diffusion.sf, 3)
    np.testing.assert_array_equal(got, images.to_uint8(want))
    # Existing outputs are kept (skipped) unless overwrite.
    (out / "coffee.png").write_bytes(b"old")
    (src / "broken.png").unlink()
    nowhere = _copy(cfg, unet_checkpoint=str(tmp_path / "gone"), autoencoder_checkpoint=str(tmp_path / "gone"))
    assert sample.restore_lq_images(nowhere, progress=False, log=messages.append)["written"] == []  # loads nothing
    assert (out / "coffee.png").read_bytes() == b"old" and "skipped 2" in messages[-1]
    cfg.overwrite = True
    cfg.reference = str(tmp_path / "gt")  # ground truth of LQ inputs: same-named files, scores in metrics.json
    gt = pathlib.Path(cfg.reference)
    for name in ("astronaut", "coffee"):
        images.write_png(gt / f"{name}.png", photo(name, side * cfg.diffusion.sf, side * cfg.diffusion.sf))
    result = sample.restore_lq_images(cfg, progress=False)
    assert [p.name for p in result["written"]] == ["astronaut.png", "coffee.png", "metrics.json"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "coffee.png")), got)  # other files don't matter
    record = json.loads((out / "metrics.json").read_text())
    assert record["images"] == result["scores"] and sorted(record["images"]) == ["astronaut.png", "coffee.png"]
    # scores are of the 8-bit PNG the user gets (the same whether the run was resumed or not)
    np.testing.assert_allclose(record["images"]["coffee.png"]["psnr"], sample.image_scores(
        images.read_image(out / "coffee.png"), images.read_image(gt / "coffee.png"))["psnr"], rtol=1e-5)
    # a resumed run scores the outputs it keeps, so metrics.json still covers every image
    (out / "metrics.json").unlink()
    resumed = sample.restore_lq_images(_copy(cfg, overwrite=False), progress=False, log=messages.append)
    assert resumed["written"] == [out / "metrics.json"] and resumed["scores"] == record["images"]


def test_restore_lq_images_refusals(tiny, tmp_path):
    cfg, _, _ = tiny
    lq = tmp_path / "photo.png"
    images.write_png(lq, photo("astronaut", 24, 20))
    run = _copy(cfg, input=str(lq), output=str(tmp_path / "out"))
    cases = [
        (dict(unet_checkpoint=str(tmp_path / "nope")), "checkpoint directory .*nope does not exist"),
        (dict(autoencoder_checkpoint=cfg.unet_checkpoint), "holds the unet"),
        (dict(input=str(tmp_path / "missing.png")), "does not exist"),
        (dict(input=""), "no input given: pass --config.input"),
        (dict(mask=str(lq)), "takes no mask"),
        (dict(reference=str(tmp_path / "missing_gt.png")), "reference .* does not exist"),
        (dict(input_is_measurement=False, mask=str(lq)), "go with LQ inputs"),
    ]
    for changes, message in cases:
        with pytest.raises(sample.SampleError, match=message):
            sample.restore_lq_images(_copy(run, **changes), progress=False)
    assert not (tmp_path / "out").exists()
    incomplete = ml_collections.ConfigDict(run.to_dict())
    del incomplete["overwrite"]
    with pytest.raises(sample.SampleError, match="lacks overwrite"):
        sample.restore_lq_images(incomplete, progress=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "photo.png").write_bytes(b"x")
    with pytest.raises(sample.SampleError, match="exists; pass --config.overwrite=True"):
        sample.restore_lq_images(run, progress=False)


def test_mask_file_size_mismatch(load_fixture, tmp_path):
    cfg, _, _ = inpaint_setup(load_fixture)
    lq, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    images.write_png(lq, photo("astronaut", 24, 20))
    images.write_png(mask, np.ones((1, 20, 20, 1), np.float32))
    cfg.update(input=str(lq), mask=str(mask), output=str(tmp_path / "out"))
    networks = (None, None)  # never reached: the mask is checked before anything runs
    with pytest.raises(sample.SampleError, match="mask .* is 20x20 but image .* is 20x24"):
        sample.restore_lq_images(cfg, networks=networks, progress=False)
    cfg.mask = ""
    with pytest.raises(sample.SampleError, match="inpainting model: give a mask"):
        sample.restore_lq_images(cfg, networks=networks, progress=False)
    gray = sample.read_mask(mask)
    assert gray.shape == (1, 20, 20, 1) and np.all(gray == 1.0)


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "resshift_jax.sample", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_cli_end_to_end_on_a_photo(tiny, tmp_path):
    cfg, _, _ = tiny
    cfg_file = tmp_path / "tiny_config.py"
    cfg_file.write_text("import ml_collections\n"
                        f"def get_config():\n    return ml_collections.ConfigDict({cfg.to_dict()!r})\n")
    height, width = 48, 40
    lq = tmp_path / "astronaut.png"
    images.write_png(lq, photo("astronaut", height, width))
    out = tmp_path / "results"
    proc = _cli("--config", cfg_file, f"--config.input={lq}", f"--config.output={out}", "--config.sample.seed=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sf = cfg.diffusion.sf
    with Image.open(out / "astronaut.png") as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (width * sf, height * sf)
        pixels = np.asarray(im)
    assert pixels.std() > 5  # a picture, not a constant
    assert [p.name for p in out.iterdir()] == ["astronaut.png"]  # no temporary files left

    def one_line_error(proc, message):
        assert proc.returncode == 1, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("resshift_jax.sample: error:") and message in lines[0], \
            proc.stderr[-2000:]

    one_line_error(_cli("--config", cfg_file, f"--config.input={lq}", f"--config.output={out}"),
                   "exists; pass --config.overwrite=True")
    one_line_error(_cli("--config", cfg_file, f"--config.input={lq}", f"--config.output={tmp_path / 'o2'}",
                        f"--config.unet_checkpoint={tmp_path / 'missing_ckpt'}"), "does not exist")
    bad = tmp_path / "bad.png"
    bad.write_text("this is not a PNG")
    one_line_error(_cli("--config", cfg_file, f"--config.input={bad}", f"--config.output={tmp_path / 'o3'}"),
                   "unreadable image")
    # the config is locked: an unknown field is a one-line error naming it (ml_collections' own check)
    one_line_error(_cli("--config", cfg_file, f"--config.input={lq}", "--config.sample.tile_sise=64"),
                   "unknown config field --config.sample.tile_sise")
    one_line_error(_cli("--config", cfg_file, "--config.tile_size=64"), "unknown config field --config.tile_size")
