"""``deqir_jax.masks``: the inpainting mask generators (shapes, values, determinism) and mask images."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deqir_jax import masks

SIZE = (24, 40)  # (H, W), not square: catches swapped axes


@pytest.mark.parametrize("kind", masks.MASK_KINDS)
def test_generators_give_binary_masks_of_the_image_size(kind):
    mask = masks.make_mask(kind, SIZE, seed=3)
    assert mask.shape == SIZE and mask.dtype == np.float32
    assert set(np.unique(mask)) == {0.0, 1.0}, kind  # something observed, something missing


@pytest.mark.parametrize("kind", masks.MASK_KINDS)
def test_generators_are_deterministic_in_the_seed(kind):
    np.testing.assert_array_equal(masks.make_mask(kind, SIZE, seed=5), masks.make_mask(kind, SIZE, seed=5))
    if kind in ("random", "text"):
        assert not np.array_equal(masks.make_mask(kind, SIZE, seed=5), masks.make_mask(kind, SIZE, seed=6))


def test_stripes_box_and_random_numbers():
    stripes = masks.stripes(SIZE, period=8, width=3)
    rows = np.arange(SIZE[0]) % 8 >= 3
    np.testing.assert_array_equal(stripes, np.repeat(rows[:, None], SIZE[1], axis=1).astype(np.float32))
    box = masks.box(SIZE, fraction=0.5)
    assert box.sum() == SIZE[0] * SIZE[1] - 12 * 20 and box[12, 20] == 0.0 and box[0, 0] == 1.0
    big = masks.random_pixels((200, 200), missing=0.3, seed=0)
    assert abs(1.0 - big.mean() - 0.3) < 0.01


def test_mask_images_are_read_white_observed(tmp_path):
    pixels = np.zeros(SIZE, np.uint8)
    pixels[:, : SIZE[1] // 2] = 255  # left half observed
    pixels[0, -1] = 127  # just below mid-grey: missing
    pixels[1, -1] = 128  # just above: observed
    path = tmp_path / "mask.png"
    Image.fromarray(pixels).save(path)
    mask = masks.load_mask(path, SIZE)
    assert mask.shape == SIZE and mask.dtype == np.float32
    assert mask[:, : SIZE[1] // 2].all() and mask[0, -1] == 0.0 and mask[1, -1] == 1.0
    assert mask[2:, SIZE[1] // 2 :].sum() == 0.0
    np.testing.assert_array_equal(masks.make_mask(str(path), SIZE), mask)  # a file path is a kind too


def test_mask_mistakes_are_one_line_errors(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(np.full(SIZE, 255, np.uint8)).save(path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    for call, message in (
        (lambda: masks.load_mask(path, (SIZE[0], SIZE[1] + 1)), f"is {SIZE[0]}x{SIZE[1]}, the image is"),
        (lambda: masks.load_mask(bad), "cannot read mask image"),
        (lambda: masks.make_mask("zebra", SIZE), "neither a mask kind"),
    ):
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
