"""ircore.data: folder and TFDS sources through grain; deterministic order by seed and step; process
slices; worker processes; crops."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from ircore import data, images, train_config


def _photos():
    return [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket(),
            np.repeat(skdata.camera()[..., None], 3, axis=-1)]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    for i, img in enumerate(_photos()):
        small = np.asarray(Image.fromarray(img).resize((img.shape[1] // 8, img.shape[0] // 8)))
        (root / ("sub" if i % 2 else ".")).mkdir(exist_ok=True)
        Image.fromarray(small).save(root / ("sub" if i % 2 else ".") / f"img{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def _cfg(folder, **kw):
    cfg = train_config.data_defaults()
    cfg.folder = str(folder)
    cfg.crop_size = 32
    cfg.num_threads = 2
    cfg.prefetch = 2
    cfg.update(kw)
    return cfg


def _take(it, n):
    return [next(it)["hq"] for _ in range(n)]


def test_folder_source_lists_images_recursively(photo_folder):
    source = data.open_source(_cfg(photo_folder))
    files = [str(p) for p in images.list_images(photo_folder, recursive=True)]
    assert len(files) == 5 and all(f.endswith(".png") for f in files)
    assert list(source.files) == files


def test_batches_are_deterministic_and_resumable(photo_folder):
    cfg = _cfg(photo_folder)
    batches = data.make_train_batches(cfg, seed=7, global_batch=4, rows=(0, 4))
    first = _take(batches(0), 5)
    assert first[0].shape == (4, 32, 32, 3) and first[0].dtype == np.uint8
    again = _take(batches(0), 5)
    resumed = _take(batches(3), 2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(resumed[0], first[3])
    np.testing.assert_array_equal(resumed[1], first[4])
    other_seed = _take(data.make_train_batches(cfg, seed=8, global_batch=4, rows=(0, 4))(0), 1)
    assert not np.array_equal(other_seed[0], first[0])
    # With flat-colour images the crop does not matter: each epoch of 5 elements is a permutation of the
    # 5 images and consecutive epochs are shuffled differently.
    flat = [{"image": np.full((40, 50, 3), 10 * i, np.uint8)} for i in range(5)]
    stream = data.element_stream(flat, cfg, 7)
    ids = [int(stream[i][0, 0, 0]) // 10 for i in range(15)]
    assert all(sorted(ids[e * 5:(e + 1) * 5]) == list(range(5)) for e in range(3))
    assert ids[:5] != ids[5:10] or ids[5:10] != ids[10:15]


def test_process_rows_concatenate_to_the_global_batch(photo_folder):
    cfg = _cfg(photo_folder)
    full = _take(data.make_train_batches(cfg, seed=1, global_batch=6, rows=(0, 6))(2), 2)
    lo = _take(data.make_train_batches(cfg, seed=1, global_batch=6, rows=(0, 3))(2), 2)
    hi = _take(data.make_train_batches(cfg, seed=1, global_batch=6, rows=(3, 6))(2), 2)
    for f, a, b in zip(full, lo, hi):
        np.testing.assert_array_equal(f, np.concatenate([a, b]))
    with pytest.raises(ValueError, match="rows"):
        data.make_train_batches(cfg, seed=1, global_batch=6, rows=(4, 8))


def test_worker_processes_give_the_same_batches(photo_folder):
    ref = _take(data.make_train_batches(_cfg(photo_folder), seed=3, global_batch=4, rows=(0, 4))(1), 3)
    mp = _take(data.make_train_batches(_cfg(photo_folder, num_workers=2), seed=3, global_batch=4,
                                       rows=(0, 4))(1), 3)
    for a, b in zip(ref, mp):
        np.testing.assert_array_equal(a, b)


def test_random_crop_rules():
    rng = np.random.default_rng(0)
    img = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)
    out = data.random_crop(img, rng, crop_size=20, rescale=True, hflip=False)
    assert out.shape == (20, 20, 3)
    # rescale: a 40x40 square area-resized by 2 -> every output pixel is the mean of a 2x2 block of the input
    found = False
    for left in range(0, 21):
        block = img[:, left:left + 40].astype(np.float64).reshape(20, 2, 20, 2, 3).mean(axis=(1, 3))
        found |= np.abs(block - out).max() <= 1.0
    assert found
    plain = data.random_crop(img, rng, crop_size=16, rescale=False, hflip=False)
    assert plain.shape == (16, 16, 3)
    small = data.random_crop(img[:10, :12], rng, crop_size=16, rescale=True)
    assert small.shape == (16, 16, 3)
    flips = {data.random_crop(img[:20, :20], np.random.default_rng(s), crop_size=20)[0, 0, 0] for s in range(8)}
    assert len(flips) == 2  # unflipped and flipped first pixel
    centre = data.center_crop(img, 20)
    np.testing.assert_allclose(centre, img[:, 10:50].astype(np.float64).reshape(20, 2, 20, 2, 3).mean(axis=(1, 3)),
                               atol=1.0)
    with pytest.raises(ValueError, match="smaller than crop_size"):
        data.center_crop(img, 64)


def _make_tfds(data_dir):
    import tensorflow_datasets as tfds

    class TinyPhotos(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(num_classes=5)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(range(0, 4)), "validation": self._generate_examples(range(4, 5))}

        def _generate_examples(self, indices):
            photos = _photos()
            for i in indices:
                buf = io.BytesIO()
                img = photos[i]
                Image.fromarray(img).resize((img.shape[1] // 8, img.shape[0] // 8)).save(buf, format="PNG")
                yield i, {"image": buf.getvalue(), "label": i}

    TinyPhotos(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return "tiny_photos"


def test_tfds_data_source(tmp_path):
    name = _make_tfds(tmp_path)
    cfg = train_config.data_defaults()
    cfg.update(dict(source="tfds", tfds_name=name, tfds_data_dir=str(tmp_path), crop_size=32, num_threads=2))
    batches = data.make_train_batches(cfg, seed=0, global_batch=2, rows=(0, 2))
    got = _take(batches(0), 3)
    assert got[0].shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(_take(batches(2), 1)[0], got[2])
    cfg.eval.update(dict(source="tfds", tfds_name=name, tfds_data_dir=str(tmp_path), num_images=3))
    held_out = data.load_eval_images(cfg.eval, 32)
    assert held_out.shape == (1, 32, 32, 3)  # the validation split has one image
    cfg.tfds_name = "no_such_dataset_here"
    with pytest.raises(ValueError, match="cannot open TFDS data set 'no_such_dataset_here'"):
        data.open_source(cfg)
