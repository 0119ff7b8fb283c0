"""``ircore.figures.comparison``: labelled, enlarged, zoomed comparison figures."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from ircore import figures, images


def _photo(size: int) -> np.ndarray:
    img = skimage.data.chelsea()[:size * 4:4, :size * 4:4].astype(np.float32) / 255.0
    return images.from_unit(img)


def test_layout_enlargement_and_labels():
    hq = _photo(64)
    lq = hq[::4, ::4]
    restored = hq.copy()
    restored[40:52, 8:20] = -1.0  # a visible defect: the zoom row must find it
    fig = figures.comparison([("input", lq), ("restored", restored), ("reference", hq)], min_height=256, gap=6)
    label_h, height, width = 14 + 8, 256, 256
    assert fig.shape == (label_h + 6 + height + 6 + height, 3 * width + 2 * 6, 3)
    u8 = images.to_uint8(fig)
    top = label_h + 6
    # panels are nearest-neighbour enlargements (x4 for the 64x64 panels, x16 for the 16x16 input)
    np.testing.assert_array_equal(u8[top + 2 * 4 + 1, (width + 6) * 2 + 3 * 4 + 2], images.to_uint8(hq)[2, 3])
    np.testing.assert_array_equal(u8[top + 16 * 1 + 5, 16 * 2 + 7], images.to_uint8(lq)[1, 2])
    # every label strip carries dark text on white; the gaps are white
    for i in range(3):
        strip = u8[:label_h, i * (width + 6): i * (width + 6) + width]
        assert strip.min() < 100 and strip.max() == 255
    assert (u8[:, width:width + 6] == 255).all()
    # the zoom row shows the defect (the restored panel's zoom is mostly black where the reference is not)
    zoom_restored = u8[top + height + 6:, width + 6: 2 * width + 6]
    zoom_reference = u8[top + height + 6:, 2 * (width + 6):]
    assert (zoom_restored.mean(-1) < 5).mean() > 0.2 and (zoom_reference.mean(-1) < 5).mean() < 0.05
    # and the zoomed region is boxed in red on the full view
    full = u8[top:top + height, width + 6: 2 * width + 6]
    assert ((full[..., 0] == 220) & (full[..., 1] == 30)).sum() > 100


def test_busiest_crop_finds_the_difference():
    a = np.zeros((32, 40, 3), np.uint8)
    b = a.copy()
    b[20:26, 30:36] = 255
    y, x = figures.busiest_crop([a, b], (8, 8))
    assert 18 <= y <= 20 and 28 <= x <= 30
    assert figures.busiest_crop([a, a], (8, 8)) == (12, 16)


def test_long_labels_wrap_instead_of_being_cut():
    photo = _photo(64)
    long = figures.score_label("restored", {"psnr": 24.312, "ssim": 0.6139, "lpips": 0.4391})
    fig = images.to_uint8(figures.comparison([("input", photo), (long, photo)], min_height=128))
    font = figures.ImageFont.load_default(size=14)
    lines = figures.wrap_label(long, 128, font)
    assert len(lines) > 1 and "  ".join(lines) == long and all(font.getlength(x) <= 120 for x in lines)
    assert fig.shape[0] == (len(lines) * 18 + 4) + 6 + 128 + 6 + 128  # every label line has room
    second_line = fig[18 + 2: 18 + 16, 128 + 6: 2 * 128 + 6]
    assert second_line.min() < 100  # the second line is drawn
    assert figures.wrap_label("short", 128, font) == ["short"]


def test_score_label_and_errors():
    assert figures.score_label("restored", {"psnr": 27.104, "ssim": 0.8123}) == "restored  27.10 dB  SSIM 0.812"
    assert figures.score_label("input", None) == "input"
    with pytest.raises(ValueError, match="panel 'gray' must be an RGB image"):
        figures.comparison([("gray", np.zeros((8, 8)))])
    with pytest.raises(ValueError, match="at least one panel"):
        figures.comparison([])
