"""``ircore.photos`` (the package photographs and their split), the ``photos`` data source and random-scale
crops, and the result helpers of ``ircore.images``."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from ircore import data, images, photos, train_config


def test_split_is_disjoint_and_complete():
    assert set(photos.TRAIN).isdisjoint(photos.HELDOUT)
    assert set(photos.TRAIN) | set(photos.HELDOUT) == set(photos.SOURCES)
    assert photos.DEFAULT in photos.HELDOUT
    assert len(photos.TRAIN) >= 10 and len(photos.HELDOUT) >= 10
    assert set(photos.BUNDLED) <= set(photos.HELDOUT)
    assert all(licence for _, _, licence in photos.SOURCES.values())


@pytest.mark.parametrize("name", photos.BUNDLED)
def test_bundled_heldout_photos_are_the_package_files(name):
    bundled, original = photos.bundled_path(name), photos.package_path(name)
    assert bundled.read_bytes() == original.read_bytes()
    assert photos.path(name) == bundled  # the bundled photos never need the extra packages


def test_every_photo_loads_as_rgb_uint8():
    for name in photos.SOURCES:
        img = photos.load(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3
        assert min(img.shape[:2]) >= 256, name


def test_unknown_names_and_splits_are_refused():
    with pytest.raises(ValueError, match="unknown photo 'nope'"):
        photos.path("nope")
    with pytest.raises(ValueError, match="only the photos"):
        photos.bundled_path("astronaut")
    with pytest.raises(ValueError, match="unknown photo split"):
        photos.split_paths("test")
    cfg = train_config.data_defaults()
    cfg.source, cfg.photos_split = "photos", "validation"
    with pytest.raises(ValueError, match="photos_split must be one of"):
        data.open_source(cfg)


def test_photos_source_serves_the_split_from_memory():
    cfg = train_config.data_defaults()
    cfg.source = "photos"
    train = data.open_source(cfg)
    assert isinstance(train, data.InMemorySource) and len(train) == len(photos.TRAIN)
    np.testing.assert_array_equal(train[0]["image"], photos.load(photos.TRAIN[0]))
    cfg.photos_split = "heldout"
    held = data.open_source(cfg)
    assert len(held) == len(photos.HELDOUT)
    np.testing.assert_array_equal(held[0]["image"], np.asarray(Image.open(photos.bundled_path(photos.HELDOUT[0]))
                                                               .convert("RGB")))


def _detail(crop: np.ndarray) -> float:
    """Mean absolute horizontal gradient: larger for native-scale crops of a photo than for shrunk ones."""
    return float(np.mean(np.abs(np.diff(crop.astype(np.float32), axis=1))))


def test_random_scale_crops_span_native_to_whole_picture():
    # A pattern with a 1-pixel period: native-scale crops keep it, shrunk ones average it away.
    stripes = np.zeros((256, 256, 3), np.uint8)
    stripes[:, ::2] = 255
    details = []
    for seed in range(40):
        crop = data.random_crop(stripes, np.random.default_rng(seed), crop_size=32, rescale=True,
                                hflip=False, random_scale=True)
        assert crop.shape == (32, 32, 3)
        details.append(_detail(crop))
    whole = data.random_crop(stripes, np.random.default_rng(0), crop_size=32, rescale=True, hflip=False)
    assert max(details) == pytest.approx(255.0)  # some crops at native scale
    assert min(details) < 0.2 * max(details)  # some nearly shrunk to the whole picture
    assert _detail(whole) < 0.2 * max(details)
    again = data.random_crop(stripes, np.random.default_rng(7), crop_size=32, rescale=True, hflip=False,
                             random_scale=True)
    np.testing.assert_array_equal(again, data.random_crop(stripes, np.random.default_rng(7), crop_size=32,
                                                          rescale=True, hflip=False, random_scale=True))



def test_native_fraction_takes_that_share_of_crops_at_native_pixels():
    stripes = np.zeros((256, 256, 3), np.uint8)
    stripes[:, ::2] = 255  # a native-scale crop keeps the full 1-pixel contrast, any shrunk one averages it

    def native_share(fraction: float, n: int = 400) -> float:
        rng = np.random.default_rng(3)
        crops = [data.random_crop(stripes, rng, crop_size=32, rescale=True, hflip=False, random_scale=True,
                                  native_fraction=fraction) for _ in range(n)]
        return float(np.mean([_detail(c) == pytest.approx(255.0) for c in crops]))

    plain, half, every = native_share(0.0), native_share(0.5), native_share(1.0)
    assert every == 1.0
    assert plain < 0.1  # log-uniform sides: a side of exactly 32 is rare
    assert 0.4 < half - plain * 0.5 < 0.6
    # fraction 0 draws exactly as before (no extra random number), so older recipes reproduce
    a = data.random_crop(stripes, np.random.default_rng(9), crop_size=32, random_scale=True)
    b = data.random_crop(stripes, np.random.default_rng(9), crop_size=32, random_scale=True, native_fraction=0.0)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="native_fraction"):
        data.random_crop(stripes, np.random.default_rng(0), crop_size=32, random_scale=True, native_fraction=1.5)

def test_side_by_side_scales_panels_to_the_tallest():
    small = np.full((1, 4, 4, 3), -1.0, np.float32)  # black, scaled x4 (nearest)
    big = np.full((16, 16, 3), 1.0, np.float32)
    odd = np.zeros((10, 6, 3), np.float32)  # 16 / 10 is not an integer: centred, not scaled
    out = images.side_by_side([small, big, odd], gap=2)
    assert out.shape == (16, 16 + 2 + 16 + 2 + 6, 3)
    np.testing.assert_array_equal(out[:, :16], -1.0)
    np.testing.assert_array_equal(out[:, 18:34], 1.0)
    np.testing.assert_array_equal(out[3:13, 36:42], 0.0)
    np.testing.assert_array_equal(out[:3, 36:42], 1.0)  # white background around the short panel
    with pytest.raises(ValueError, match="RGB images"):
        images.side_by_side([np.zeros((4, 4))])


def test_fresh_folder_never_reuses_a_name(tmp_path):
    first = images.fresh_folder(tmp_path / "runs")
    second = images.fresh_folder(tmp_path / "runs")
    assert first != second and first.is_dir() and second.is_dir()
    assert re.fullmatch(r"run-\d{8}-\d{6}(-\d+)?", first.name)
    assert not any(first.iterdir())
