"""ircore.metrics against independent numpy / scikit-image implementations on real photos."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import skimage.color
import skimage.data
import skimage.metrics

from ircore import metrics

PSNR_ATOL_DB = 1e-4  # float32 (ours) vs float64 (reference); observed <= 3.4e-6 dB
SSIM_ATOL = 2e-5  # observed <= 3.5e-6


@pytest.fixture(scope="module")
def pairs():
    """Two clean/degraded pairs (astronaut and coffee, 128x160, [0, 1] RGB float32) as NHWC batches."""
    rng = np.random.default_rng(0)
    clean = np.stack(
        [skimage.data.astronaut()[100:356:2, 80:400:2], skimage.data.coffee()[40:296:2, 100:420:2]]
    ).astype(np.float64) / 255.0
    blurred = scipy.ndimage.gaussian_filter(clean, sigma=(0, 1.2, 1.2, 0))
    noise_sigma = np.array([0.02, 0.06]).reshape(2, 1, 1, 1)
    degraded = np.clip(blurred + noise_sigma * rng.standard_normal(clean.shape), 0, 1)
    return clean.astype(np.float32), degraded.astype(np.float32)


def _reference_y(img: np.ndarray) -> np.ndarray:
    # scikit-image's ITU-R BT.601 YCbCr (Y in 16..235 for [0, 1] input), rescaled to [0, 1]
    return skimage.color.rgb2ycbcr(img.astype(np.float64))[..., :1] / 255.0


@pytest.mark.parametrize("crop_border", [0, 4])
@pytest.mark.parametrize("y_channel", [False, True])
def test_psnr_matches_numpy_and_skimage(pairs, crop_border, y_channel):
    clean, degraded = pairs
    ours = np.asarray(metrics.psnr(clean, degraded, crop_border=crop_border, y_channel=y_channel))
    assert ours.shape == (clean.shape[0],)
    for i in range(clean.shape[0]):
        a, b = clean[i].astype(np.float64), degraded[i].astype(np.float64)
        if crop_border:
            a, b = a[crop_border:-crop_border, crop_border:-crop_border], b[crop_border:-crop_border, crop_border:-crop_border]
        if y_channel:
            a, b = _reference_y(a), _reference_y(b)
        by_hand = 10.0 * np.log10(1.0 / np.mean((a - b) ** 2))
        by_skimage = skimage.metrics.peak_signal_noise_ratio(a, b, data_range=1.0)
        assert abs(by_hand - by_skimage) < 1e-9
        assert abs(ours[i] - by_hand) < PSNR_ATOL_DB, (i, ours[i], by_hand)
    assert 20.0 < ours.min() and ours.max() < 45.0  # a sane range for these degradations


@pytest.mark.parametrize("crop_border", [0, 4])
@pytest.mark.parametrize("y_channel", [False, True])
def test_ssim_matches_skimage(pairs, crop_border, y_channel):
    clean, degraded = pairs
    ours = np.asarray(metrics.ssim(clean, degraded, crop_border=crop_border, y_channel=y_channel))
    assert ours.shape == (clean.shape[0],)
    for i in range(clean.shape[0]):
        a, b = clean[i].astype(np.float64), degraded[i].astype(np.float64)
        if crop_border:
            a, b = a[crop_border:-crop_border, crop_border:-crop_border], b[crop_border:-crop_border, crop_border:-crop_border]
        if y_channel:
            a, b = _reference_y(a), _reference_y(b)
        reference = skimage.metrics.structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
        )
        assert abs(ours[i] - reference) < SSIM_ATOL, (i, ours[i], reference)
    assert 0.3 < ours.min() and ours.max() < 0.99


def test_identical_and_single_image(pairs):
    clean, degraded = pairs
    assert np.all(np.isinf(np.asarray(metrics.psnr(clean, clean))))
    np.testing.assert_allclose(np.asarray(metrics.ssim(clean, clean)), 1.0, atol=1e-5)
    single = np.asarray(metrics.psnr(clean[0], degraded[0]))
    assert single.shape == (1,)
    np.testing.assert_allclose(single[0], np.asarray(metrics.psnr(clean, degraded))[0], rtol=1e-6)


def test_rgb_to_y_matches_skimage(pairs):
    clean, _ = pairs
    np.testing.assert_allclose(np.asarray(metrics.rgb_to_y(clean)), _reference_y(clean), atol=1e-6)
    y = np.asarray(metrics.rgb_to_y(np.array([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]], np.float32)))
    np.testing.assert_allclose(y[..., 0] * 255.0, [[16.0, 235.0]], atol=1e-4)


def test_bad_inputs(pairs):
    clean, degraded = pairs
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(clean, degraded[:, :-1])
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        metrics.ssim(clean[0, 0], degraded[0, 0])
    with pytest.raises(ValueError, match="leaves nothing"):
        metrics.psnr(clean, degraded, crop_border=clean.shape[1] // 2)
    with pytest.raises(ValueError, match="float images"):
        metrics.psnr((clean * 255).astype(np.uint8), (degraded * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="3 channels"):
        metrics.psnr(clean[..., :2], degraded[..., :2], y_channel=True)
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(clean[:, :10, :10], degraded[:, :10, :10])
