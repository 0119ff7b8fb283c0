"""``python -m resshift_jax.sample`` against bad input and faults: a table of cases (set-up -> the one-line
message fragment and the exit status), each checking that nothing outside the run's own output changed and
that a run which fails before writing leaves no output folder behind.

The quick cases call :func:`resshift_jax.sample.restore_lq_images` (what the command runs; a SampleError is
exit status 1, Ctrl-C exit status 130): every one fails before a network runs. The same table runs through the
command line in a slow test (one case also quick), with a tiny model's converted checkpoints.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from resshift_fixture_utils import REPO, converted_tiny, photo

from ircore import checkpoints, images
from resshift_jax import pipeline, sample

PREFIX = "resshift_jax.sample: error: "


@pytest.fixture(scope="module")
def tiny(load_fixture, tmp_path_factory):
    """The tiny real-SR model (sf 4): config with its converted checkpoint folders, and the params."""
    return converted_tiny(load_fixture, tmp_path_factory.mktemp("resshift_tiny_cli"))


def snapshot(root: pathlib.Path, skip: pathlib.Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file (folders: (0, 0)) under ``root`` except ``skip`` (the run's output)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = pathlib.Path(dirpath) / name
            if path == skip or skip in path.parents:
                continue
            stat = path.lstat()  # a folder's mtime changes when a run adds and removes its own output folder
            found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns) if path.is_file() else (0, 0)
    return found


# ----------------------------------------------------------------------------------------------- the cases
# Each set-up gets (tmp folder, config) and changes the config / writes files; the run's output folder is
# cfg.output ("" -> the fresh outputs/resshift/run-... in the tmp folder, the working directory).
def _image(tmp, name="photo.png", height=24, width=20):
    path = tmp / name
    images.write_png(path, photo("astronaut", height, width))
    return path


def clean_too_small(tmp, cfg):
    cfg.update(input=str(_image(tmp, height=40, width=8)), input_is_measurement=False)


def clean_outputs_exist(tmp, cfg):
    cfg.update(input=str(_image(tmp, height=48, width=48)), input_is_measurement=False)
    (tmp / "out").mkdir()
    (tmp / "out" / "lq.png").write_bytes(b"mine")


def clean_folder(tmp, cfg):
    (tmp / "in").mkdir()
    _image(tmp / "in")
    cfg.update(input=str(tmp / "in"), input_is_measurement=False)


def output_is_file(tmp, cfg):
    cfg.input = str(_image(tmp))
    (tmp / "out").write_bytes(b"a file")


def output_inside_file(tmp, cfg):
    cfg.update(input=str(_image(tmp)), output=str(tmp / "file" / "out"))
    (tmp / "file").write_bytes(b"a file")


def output_read_only(tmp, cfg):
    cfg.update(input=str(_image(tmp)), output=str(tmp / "ro" / "out"))
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o555)


def unreadable_image(tmp, cfg):
    (tmp / "photo.png").write_bytes(b"not a PNG")
    cfg.input = str(tmp / "photo.png")


def missing_input(tmp, cfg):
    cfg.input = str(tmp / "nope.png")


def reference_wrong_size(tmp, cfg):
    cfg.update(input=str(_image(tmp)), reference=str(_image(tmp, "gt.png", 24, 20)))


def reference_too_small_to_score(tmp, cfg):
    cfg.update(input=str(_image(tmp, height=2, width=2)), reference=str(_image(tmp, "gt.png", 8, 8)))


def reference_wrong_size_in_folder(tmp, cfg):
    (tmp / "in").mkdir()
    (tmp / "gt").mkdir()
    _image(tmp / "in", "a.png")
    _image(tmp / "gt", "a.png", 10, 10)
    cfg.update(input=str(tmp / "in"), reference=str(tmp / "gt"))


def mask_for_sr_model(tmp, cfg):
    cfg.update(input=str(_image(tmp)), mask=str(_image(tmp, "mask.png")))


def output_exists(tmp, cfg):
    cfg.input = str(_image(tmp))
    (tmp / "out").mkdir()
    (tmp / "out" / "photo.png").write_bytes(b"mine")


def deqir_weights(tmp, cfg):
    """A DeqIR-style parameter checkpoint (another model's tree) given as the UNet."""
    cfg.input = str(_image(tmp))
    params = {"conv_in": {"kernel": np.zeros((3, 3, 3, 64), np.float32), "bias": np.zeros(64, np.float32)}}
    checkpoints.save_params(tmp / "deqir_ckpt", params, metadata={"source": "deqir.pth", "model": {"ch": 64}})
    cfg.unet_checkpoint = str(tmp / "deqir_ckpt")


def garbage_checkpoint(tmp, cfg):
    cfg.input = str(_image(tmp))
    (tmp / "junk" / "params").mkdir(parents=True)
    (tmp / "junk" / "params" / "data").write_bytes(os.urandom(64))
    cfg.unet_checkpoint = str(tmp / "junk")


def pth_as_checkpoint(tmp, cfg):
    cfg.input = str(_image(tmp))
    (tmp / "model.pth").write_bytes(b"torch pickle")
    cfg.unet_checkpoint = str(tmp / "model.pth")


def fresh_folder_bad_input(tmp, cfg):
    unreadable_image(tmp, cfg)
    cfg.output = ""


CASES = [  # (set-up, message fragment, exit status)
    (clean_too_small, "is 8x40 pixels; degrading it by x4 and scoring the result (SSIM) needs at least 11x11", 1),
    (clean_outputs_exist, "already holds lq.png; choose another --config.output or pass --config.overwrite=True", 1),
    (clean_folder, "is a folder; a clean image to degrade is one file", 1),
    (output_is_file, "out is a file; --config.output must be a folder", 1),
    (output_inside_file, "is inside", 1),
    (output_read_only, "cannot write to the output folder", 1),
    (unreadable_image, "unreadable image", 1),
    (missing_input, "nope.png does not exist", 1),
    (reference_wrong_size, "is 20x24 but the restored photo.png will be 80x96 (width x height, x4)", 1),
    (reference_too_small_to_score, "too small to score (SSIM needs 11x11)", 1),
    (reference_wrong_size_in_folder, "1 input(s) failed (see the lines above): a.png", 1),
    (mask_for_sr_model, "takes no mask", 1),
    (output_exists, "exists; pass --config.overwrite=True", 1),
    (deqir_weights, "does not hold the unet of this config's model", 1),
    (garbage_checkpoint, "cannot read the unet checkpoint", 1),
    (pth_as_checkpoint, "is not a directory", 1),
    (fresh_folder_bad_input, "unreadable image", 1),
]

CHECKPOINT_CASES = (deqir_weights, garbage_checkpoint, pth_as_checkpoint)


def _setup(case, tmp, base):
    cfg = ml_collections.ConfigDict(base.to_dict())
    cfg.update(output=str(tmp / "out"), score_lpips=False)
    case(tmp, cfg)
    out = pathlib.Path(cfg.output) if cfg.output else tmp / "outputs"
    return cfg, out


def _writable_as_this_user(folder: pathlib.Path) -> bool:
    try:
        (folder / ".probe").touch()
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.mark.parametrize("case, message, status", CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input_is_one_line_before_any_compute(tiny, tmp_path, monkeypatch, case, message, status):
    base, unet_params, vq_params = tiny
    # the checkpoint cases load the networks from the config, the others get them (no orbax restore)
    networks = None if case in CHECKPOINT_CASES else (unet_params, vq_params)
    monkeypatch.chdir(tmp_path)  # the fresh run folder goes to ./outputs/resshift
    cfg, out = _setup(case, tmp_path, base)
    if case is output_read_only and _writable_as_this_user(tmp_path / "ro"):  # root ignores the mode bits
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(sample.tempfile, "mkstemp", refuse)
    existed = out.exists()
    before = snapshot(tmp_path, out)
    monkeypatch.setattr(pipeline.Restorer, "__call__", lambda *a, **k: pytest.fail("computed before the check"))
    try:
        with pytest.raises(sample.SampleError) as err:
            sample.restore_lq_images(cfg, networks=networks, progress=False, log=lambda msg: None)
    finally:
        (tmp_path / "ro").exists() and (tmp_path / "ro").chmod(0o755)
    text = str(err.value)
    assert message in text and "\n" not in text, text
    assert status == 1  # main() turns a SampleError into one stderr line, exit status 1
    assert snapshot(tmp_path, out) == before
    assert out.exists() == existed  # no (empty) folder left behind
    if existed and out.is_dir():
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging or probe files


# ----------------------------------------------------------------------------------------------- faults
class FakeRestorer:
    """The real restorer's settings with a cheap restoration (bicubic-like repeat) that can be interrupted."""

    def __init__(self, real: pipeline.Restorer, interrupt_at: int = -1):
        self.real, self.calls, self.interrupt_at = real, 0, interrupt_at

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __call__(self, lq, unet_params, vq_params, key=None, *, mask=None, noises=None, on_tile=None):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        sf = self.real.sf
        return np.repeat(np.repeat(np.asarray(lq), sf, axis=1), sf, axis=2)


def _folder(tmp, names=("a", "b", "c")):
    (tmp / "in").mkdir()
    for name in names:
        _image(tmp / "in", f"{name}.png")
    return tmp / "in"


def test_ctrl_c_in_a_folder_run_then_resume(tiny, tmp_path, monkeypatch):
    base, unet_params, vq_params = tiny
    cfg = ml_collections.ConfigDict(base.to_dict())
    cfg.update(input=str(_folder(tmp_path)), output=str(tmp_path / "out"))
    fake = FakeRestorer(pipeline.make_restorer(cfg), interrupt_at=2)
    monkeypatch.setattr(pipeline, "make_restorer", lambda c: fake)
    before = snapshot(tmp_path, tmp_path / "out")
    with pytest.raises(sample.Interrupted) as err:
        sample.restore_lq_images(cfg, networks=(unet_params, vq_params), progress=False, log=lambda m: None)
    assert str(err.value) == (f"interrupted after 1 of 3 image(s); finished results are in {tmp_path / 'out'}; "
                              f"rerun the same command to continue")
    assert isinstance(err.value, KeyboardInterrupt)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]  # nothing half-written
    assert snapshot(tmp_path, tmp_path / "out") == before
    fake.interrupt_at, fake.calls = -1, 0
    result = sample.restore_lq_images(cfg, networks=(unet_params, vq_params), progress=False, log=lambda m: None)
    assert [p.name for p in result["written"]] == ["b.png", "c.png"] and fake.calls == 2  # a.png kept


def test_folder_with_one_bad_reference_keeps_the_others_scores(tiny, tmp_path, monkeypatch):
    base, unet_params, vq_params = tiny
    cfg = ml_collections.ConfigDict(base.to_dict())
    cfg.update(input=str(_folder(tmp_path, ("a", "b"))), output=str(tmp_path / "out"), reference=str(tmp_path / "gt"),
               score_lpips=False)
    (tmp_path / "gt").mkdir()
    _image(tmp_path / "gt", "a.png", 96, 80)
    _image(tmp_path / "gt", "b.png", 10, 10)
    real = pipeline.make_restorer(cfg)
    monkeypatch.setattr(pipeline, "make_restorer", lambda c: FakeRestorer(real))
    lines = []
    with pytest.raises(sample.SampleError, match=r"^1 input\(s\) failed \(see the lines above\): b.png$"):
        sample.restore_lq_images(cfg, networks=(unet_params, vq_params), progress=False, log=lines.append)
    assert lines == [f"error: reference {tmp_path / 'gt' / 'b.png'} is 10x10 but the restored b.png will be 80x96 "
                     f"(width x height, x4); give the ground truth of this image"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "metrics.json"]
    assert sorted(json.loads((tmp_path / "out" / "metrics.json").read_text())["images"]) == ["a.png"]


def test_ctrl_c_before_the_first_image_leaves_no_fresh_folder(tiny, tmp_path, monkeypatch):
    base, unet_params, vq_params = tiny
    monkeypatch.chdir(tmp_path)
    cfg = ml_collections.ConfigDict(base.to_dict())
    cfg.update(input=str(_folder(tmp_path, ("a",))), output="")
    real = pipeline.make_restorer(cfg)
    monkeypatch.setattr(pipeline, "make_restorer", lambda c: FakeRestorer(real, interrupt_at=1))
    with pytest.raises(sample.Interrupted, match="before the first of 1 image.*nothing was written"):
        sample.restore_lq_images(cfg, networks=(unet_params, vq_params), progress=False, log=lambda m: None)
    assert not (tmp_path / "outputs").exists()


def test_clean_image_outputs_appear_together(tiny, tmp_path, monkeypatch):
    base, unet_params, vq_params = tiny
    cfg = ml_collections.ConfigDict(base.to_dict())
    cfg.update(input=str(_image(tmp_path, height=48, width=44)), input_is_measurement=False,
               output=str(tmp_path / "out"), score_lpips=False)
    fake = FakeRestorer(pipeline.make_restorer(cfg), interrupt_at=1)
    monkeypatch.setattr(pipeline, "make_restorer", lambda c: fake)
    with pytest.raises(sample.Interrupted, match="nothing was written"):
        sample.restore_lq_images(cfg, networks=(unet_params, vq_params), progress=False)
    assert not (tmp_path / "out").exists()
    # a failure while the files are written (here: the side-by-side figure) publishes none of them
    monkeypatch.setattr(sample.figures, "comparison", lambda panels: (_ for _ in ()).throw(OSError(28, "No space")))
    fake.interrupt_at = -1
    with pytest.raises(OSError):
        sample.restore_lq_images(cfg, networks=(unet_params, vq_params), progress=False)
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "make_restorer", lambda c: fake)
    result = sample.restore_lq_images(cfg, networks=(unet_params, vq_params), progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(sample.CLEAN_IMAGE_OUTPUTS)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["hq_size"] == [48, 44]
    assert result["metrics"]["sf"] == 4


def test_tile_progress_says_the_count_first_then_an_estimate(tiny):
    cfg, _, _ = tiny
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.sample.update(tile_size=16, tile_overlap=4, batch_size=2)
    restorer = pipeline.make_restorer(cfg)
    lines = []
    assert sample.tile_progress(restorer, 16, 16, "small.png", lines.append, bar=False) is None and lines == []
    progress = sample.tile_progress(restorer, 40, 28, "big.png", lines.append, bar=False)
    assert lines == ["big.png: 28x40 LQ pixels -> 6 tiles of 16 px (overlap 4, 2 per call)"]  # 3 rows, 2 columns
    progress(2, 6)
    assert lines[1].startswith("first 2 tile(s) in ") and "(compilation included); at most about" in lines[1] \
        and lines[1].endswith("for the other 4")
    progress(4, 6)
    assert lines[2].startswith("next 2 tile(s) in ") and lines[2].endswith("for the other 2")
    progress(6, 6)
    assert len(lines) == 3 and progress.done == 6
    with_bar = sample.tile_progress(restorer, 40, 28, "big.png", lines.append, bar=True)
    with_bar(2, 6)
    with_bar.close()  # e.g. on Ctrl-C: the bar is gone before the message
    assert with_bar.bar is None and len(lines) == 5


# ----------------------------------------------------------------------------------------------- command line
def _cli(*args, timeout=600, **kwargs):
    return subprocess.run([sys.executable, "-m", "resshift_jax.sample", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=kwargs.pop("cwd", REPO), **kwargs)


def _config_file(cfg, path):
    path.write_text("import ml_collections\n"
                    f"def get_config():\n    return ml_collections.ConfigDict({cfg.to_dict()!r})\n")
    return path


def _run_case(case, tmp_path, base):
    cfg, out = _setup(case, tmp_path, base)
    cfg_file = _config_file(cfg, tmp_path / "cfg.py")
    existed = out.exists()
    before = snapshot(tmp_path, out)
    proc = _cli("--config", cfg_file, cwd=tmp_path)
    (tmp_path / "ro").exists() and (tmp_path / "ro").chmod(0o755)
    assert snapshot(tmp_path, out) == before and out.exists() == existed
    return proc


def _one_line(proc, message, status):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == status, proc.stderr[-2000:]
    assert lines[-1].startswith(PREFIX) and message in lines[-1] and "Traceback" not in proc.stderr, \
        proc.stderr[-2000:]


def test_cli_unreadable_image(tiny, tmp_path):
    proc = _run_case(unreadable_image, tmp_path, tiny[0])
    _one_line(proc, "unreadable image", 1)
    assert len(proc.stderr.strip().splitlines()) == 1


SINGLE_LINE = [c for c in CASES if c[0] not in (reference_wrong_size_in_folder, output_read_only)]


@pytest.mark.slow
@pytest.mark.parametrize("case, message, status", SINGLE_LINE, ids=[c[0].__name__ for c in SINGLE_LINE])
def test_cli_table(tiny, tmp_path, case, message, status):
    proc = _run_case(case, tmp_path, tiny[0])
    _one_line(proc, message, status)
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_folder_with_a_bad_reference_names_it_and_exits_1(tiny, tmp_path):
    proc = _run_case(reference_wrong_size_in_folder, tmp_path, tiny[0])
    _one_line(proc, "1 input(s) failed", 1)
    assert "reference" in proc.stderr and "give the ground truth of this image" in proc.stderr


@pytest.mark.slow
def test_cli_ctrl_c_during_tiled_sampling(tiny, tmp_path):
    """SIGINT while the tiles of the second image run: exit 130, one line naming what is finished, the first
    output complete, no temporary file."""
    base, _, _ = tiny
    cfg = ml_collections.ConfigDict(base.to_dict())
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        images.write_png(tmp_path / "in" / f"{name}.png", photo("coffee", 64, 64))
    cfg.update(input=str(tmp_path / "in"), output=str(tmp_path / "out"))
    cfg.sample.update(tile_size=16, tile_overlap=4)  # 5 x 5 = 25 tiles an image: slow enough to interrupt
    proc = subprocess.Popen([sys.executable, "-m", "resshift_jax.sample", "--config",
                             _config_file(cfg, tmp_path / "cfg.py")], cwd=tmp_path, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 500
    while not (tmp_path / "out" / "a.png").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (tmp_path / "out" / "a.png").exists(), "the first image was not finished in time"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last == (f"resshift_jax.sample: interrupted: interrupted after 1 of 2 image(s); finished results are "
                    f"in {tmp_path / 'out'}; rerun the same command to continue"), err[-2000:]
    assert "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]
    images.read_image(tmp_path / "out" / "a.png")  # complete
    assert "a.png: 64x64 LQ pixels -> 25 tiles of 16 px" in err and "first 1 tile(s) in" in err
