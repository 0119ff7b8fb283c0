"""benchmarks/quality.py: the per-method summary against the baseline, the targets and the training-time axis."""
from __future__ import annotations

import json
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import quality  # noqa: E402


def _row(photo, task, method, psnr, lpips=None):
    return {"photo": photo, "task": task, "method": method, "psnr": psnr, "ssim": 0.5, "lpips": lpips}


def test_summary_means_worst_case_and_photos_below_the_baseline():
    rows = [_row("a", "sr_x4_full", "bicubic", 20.0, 0.30), _row("a", "sr_x4_full", "resshift", 21.0, 0.20),
            _row("b", "sr_x4_full", "bicubic", 30.0, 0.10), _row("b", "sr_x4_full", "resshift", 29.5, 0.12),
            _row("c", "sr_x4_full", "bicubic", 25.0, 0.20), _row("c", "sr_x4_full", "resshift", 25.8, 0.19)]
    summary = {(e["task"], e["method"]): e for e in quality.summarize(rows)}
    base, rs = summary[("sr_x4_full", "bicubic")], summary[("sr_x4_full", "resshift")]
    assert base["photos"] == 3 and base["psnr"] == pytest.approx(25.0) and "mean_gain_db" not in base
    assert rs["mean_gain_db"] == pytest.approx((1.0 - 0.5 + 0.8) / 3) and rs["worst_gain_db"] == pytest.approx(-0.5)
    assert rs["worst_photo"] == "b" and rs["below_minus_0p3_db"] == 1
    assert rs["mean_lpips_change"] == pytest.approx((-0.10 + 0.02 - 0.01) / 3)
    checks = quality._checks([], rows, quality.summarize(rows))
    assert checks["targets"] == {"resshift_full_mean_gain": True, "resshift_full_worst_gain": False,
                                 "resshift_full_lpips_better": True}
    # a method without LPIPS on every photo gets no LPIPS mean (never a mean over a subset)
    rows[1]["lpips"] = None
    rs = {(e["task"], e["method"]): e for e in quality.summarize(rows)}[("sr_x4_full", "resshift")]
    assert rs["lpips"] is None and rs["mean_lpips_change"] is None


def test_training_minutes_follow_the_logged_step_times(tmp_path):
    records = [{"step": 100, "kind": "train", "step_time": 0.6}, {"step": 150, "kind": "eval"},
               {"step": 200, "kind": "train", "step_time": 1.2}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    minutes = quality._training_minutes(tmp_path)
    assert minutes == pytest.approx({100: 1.0, 200: 3.0})
    assert quality._at_step(minutes, 400) == pytest.approx(6.0)  # extrapolated at the last logged rate
    assert quality._at_step(minutes, 50) is None
