"""``deqir_jax.results``: what is written for one restored image, and the refusal to overwrite results."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deqir_jax import results
from ircore import images


def _result(with_reference: bool, with_residuals: bool) -> results.ImageResult:
    rng = np.random.default_rng(0)
    restored = rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    residuals = np.array([0.5, 0.1, 0.01, np.nan, np.nan]) if with_residuals else None
    return results.ImageResult(
        record={"image": "x.png", "psnr": 30.0, "residual_history": [0.5, 0.1, 0.01]},
        restored=restored, measurement=restored[:, ::2, ::2], reference=restored if with_reference else None,
        residuals=residuals, title="x.png: triangular, T=3",
    )


def test_write_result_writes_every_file(tmp_path):
    result = _result(with_reference=True, with_residuals=True)
    results.write_result(tmp_path / "x", result)
    names = sorted(p.name for p in (tmp_path / "x").iterdir())
    assert names == sorted(results.OUTPUT_FILES + ("reference.png",))  # no temporary files left
    assert json.loads((tmp_path / "x" / "metrics.json").read_text()) == result.record
    assert Image.open(tmp_path / "x" / "measurement.png").size == (8, 8)
    side = np.asarray(Image.open(tmp_path / "x" / "side_by_side.png"))
    np.testing.assert_array_equal(side, images.to_uint8(results.comparison_figure(result)))
    # three labelled panels (degraded y, restored, reference) enlarged to 256 px, plus a zoomed row
    assert side.shape == (22 + 6 + 256 + 6 + 256, 3 * 256 + 2 * 6, 3)
    restored = np.asarray(Image.open(tmp_path / "x" / "restored.png"), np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(restored, result.restored[0], atol=1 / 127.5 + 1e-6)


def test_comparison_figure_labels_the_baseline_and_the_scores():
    result = _result(with_reference=True, with_residuals=False)
    record = {**result.record, "ssim": 0.9, "lpips": 0.1, "baseline": {"name": "A+y", "psnr": 20.0, "ssim": 0.5}}
    result = result._replace(record=record, baseline=result.restored * 0.5)
    fig = images.to_uint8(results.comparison_figure(result))
    assert fig.shape[1] == 4 * 256 + 3 * 6  # degraded y | A+y | restored | reference
    for i in range(4):  # every panel has a label (dark text on the white strip above it)
        assert fig[:22, i * 262: i * 262 + 256].min() < 100


def test_without_reference_or_parallel_solve_those_files_are_absent(tmp_path):
    results.write_result(tmp_path / "x", _result(with_reference=False, with_residuals=False))
    names = {p.name for p in (tmp_path / "x").iterdir()}
    assert "reference.png" not in names and "convergence.png" not in names and "restored.png" in names


def test_existing_results_are_refused_unless_overwrite(tmp_path):
    results.write_result(tmp_path / "x", _result(with_reference=False, with_residuals=False))
    with pytest.raises(FileExistsError, match="already holds restored.png.*overwrite") as err:
        results.check_outputs_free(str(tmp_path), ["y", "x"], overwrite=False)
    assert "\n" not in str(err.value)
    results.check_outputs_free(str(tmp_path), ["x"], overwrite=True)
    results.check_outputs_free(str(tmp_path), ["y"], overwrite=False)
    results.check_outputs_free("", ["x"], overwrite=False)  # no output folder yet: a fresh one is made
