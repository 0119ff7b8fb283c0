"""``deqir_jax.results``: what is written for one restored image, atomically as a folder, and never over files
that are not ours."""
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


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_folder_state_tells_finished_unfinished_and_foreign(tmp_path):
    assert results.folder_state(tmp_path / "x") == results.FolderState(False, False, ())
    results.write_result(tmp_path / "x", _result(with_reference=False, with_residuals=False))
    assert results.folder_state(tmp_path / "x") == results.FolderState(True, True, ())
    (tmp_path / "x" / "metrics.json").unlink()  # an older run killed before its last file
    assert results.folder_state(tmp_path / "x") == results.FolderState(True, False, ())
    (tmp_path / "x" / "notes.txt").write_text("mine")
    assert results.folder_state(tmp_path / "x").foreign == ("notes.txt",)
    (tmp_path / "f").write_text("a file")
    with pytest.raises(ValueError, match="is a file.*--config.output"):
        results.folder_state(tmp_path / "f")


def test_overwriting_swaps_in_the_new_folder_only_when_complete(tmp_path, monkeypatch):
    folder = tmp_path / "x"
    results.write_result(folder, _result(with_reference=False, with_residuals=False))
    before = {n: (folder / n).read_bytes() for n in _listing(folder)}
    new = _result(with_reference=True, with_residuals=False)
    new = new._replace(record={**new.record, "psnr": 31.0})

    def fail(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the new files are written

    monkeypatch.setattr(results, "plot_convergence", fail)
    with pytest.raises(KeyboardInterrupt):
        results.write_result(folder, new._replace(residuals=np.array([0.5, 0.1])))
    assert {n: (folder / n).read_bytes() for n in _listing(folder)} == before  # the earlier result, untouched
    assert _listing(tmp_path) == ["x"]  # no staging folder left
    monkeypatch.undo()
    results.write_result(folder, new)
    assert json.loads((folder / "metrics.json").read_text())["psnr"] == 31.0
    assert "reference.png" in _listing(folder) and _listing(tmp_path) == ["x"]


def test_a_folder_with_foreign_files_is_refused_and_kept(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write \\(notes.txt\\).*--config.output") as err:
        results.write_result(folder, _result(with_reference=False, with_residuals=False))
    assert "\n" not in str(err.value)
    assert _listing(folder) == ["notes.txt"] and _listing(tmp_path) == ["x"]


def test_clean_staging_removes_only_our_leftovers_of_this_run(tmp_path):
    ours = tmp_path / ".x.partial-0123456789ab"
    ours.mkdir()
    (ours / "restored.png").write_bytes(b"half")
    (ours / ".metrics.0123456789ab.tmp.json").write_bytes(b"{")
    other_image = tmp_path / ".y.partial-0123456789ab"  # not an image of this run
    other_image.mkdir()
    foreign = tmp_path / ".x.old-aaaaaaaaaaaa"  # our pattern, but someone else's file inside
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    not_ours = tmp_path / ".x.partial-backup"  # not our pattern
    not_ours.mkdir()
    assert results.clean_staging(tmp_path, ["x"]) == [ours]
    assert _listing(tmp_path) == [".x.old-aaaaaaaaaaaa", ".x.partial-backup", ".y.partial-0123456789ab"]
    assert _listing(foreign) == ["notes.txt"]
