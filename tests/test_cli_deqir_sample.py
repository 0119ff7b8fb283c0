"""``python -m deqir_jax.sample`` against bad input and faults (issue 14): one line naming the problem and the fix,
a non-zero exit, and nothing outside the run's own output changed.

Library cases call :func:`deqir_jax.sample.restore_images` with ``set_up`` replaced by a function that fails the
test: every check runs before the (slow) set-up and compute. Run-behaviour cases (skip / redo / overwrite /
Ctrl-C / failure at the first image) replace the per-image compute by a cheap fake result, so nothing compiles.
Command-line cases run the module in a subprocess (slow, except two).
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

from deqir_jax import anderson, sample
from deqir_jax.models import adm
from deqir_jax.results import ImageResult, write_result
from ircore import checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32  # the tiny prior's image size


# ----------------------------------------------------------------------------------------------- helpers
def snapshot(root: pathlib.Path, exclude: pathlib.Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` (except ``exclude`` and what is in it) -> (size, mtime_ns)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = pathlib.Path(dirpath)
        if exclude is not None and (here == exclude or exclude in here.parents):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = here / name
            if exclude is not None and path == exclude:
                continue
            st = path.lstat()
            found[str(path.relative_to(root))] = (st.st_size if path.is_file() else 0, st.st_mtime_ns)
    return found


def save_png(path: pathlib.Path, width: int, height: int, seed: int = 0) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def base_config(tmp_path: pathlib.Path, **over) -> ml_collections.ConfigDict:
    """The sr_x2 preset on the tiny prior's model config, input ``tmp/in/photo.png``, output ``tmp/out``."""
    from ircore.config_utils import load_config_file

    cfg = load_config_file(REPO / "configs/deqir/sr_x2.py")
    cfg.model = ml_collections.ConfigDict(dict(_MODEL_CFG))
    cfg.checkpoint = str(tmp_path / "prior")
    cfg.image_size, cfg.timesteps = SIZE, 10
    cfg.input, cfg.output = str(tmp_path / "in" / "photo.png"), str(tmp_path / "out")
    for key, value in over.items():
        target = cfg
        *path, leaf = key.split(".")
        for p in path:
            target = target[p]
        target[leaf] = value
    return cfg


_MODEL_CFG: dict = {}


@pytest.fixture(scope="module", autouse=True)
def model_cfg(load_fixture):
    """The tiny guided-diffusion UNet's model config (no weights needed: the checks run before loading)."""
    fx = load_fixture("deqir/tiny_unet")
    _MODEL_CFG.update(adm.config_from_create_model_kwargs(fx.meta["constructor_kwargs"]))
    assert int(fx.meta["constructor_kwargs"]["image_size"]) == SIZE
    return _MODEL_CFG


@pytest.fixture
def no_compute(monkeypatch):
    """Replaces the set-up (prior loading, compilation) by a failure: a case must be refused before it."""
    def set_up(cfg, params=None):
        raise AssertionError("the run reached set_up: the problem was not caught before the compute")

    monkeypatch.setattr(sample, "set_up", set_up)


def fake_compute(monkeypatch, fail_at: dict[int, BaseException] | None = None) -> list[str]:
    """Replaces set-up and per-image compute by a cheap fake (a grey image); ``fail_at[i]`` is raised on the
    i-th image computed. Returns the list of file names computed (in order)."""
    done: list[str] = []
    fail_at = fail_at or {}

    def restore_file(run, file, index, folder):
        if len(done) in fail_at:
            raise fail_at[len(done)]
        done.append(file.name)
        img = np.zeros((1, SIZE, SIZE, 3), np.float32)
        return ImageResult(record={"image": str(file), "folder": str(folder.resolve()), "index": index},
                           restored=img, measurement=img[:, ::2, ::2], reference=img, residuals=None,
                           title=file.name)

    monkeypatch.setattr(sample, "set_up", lambda cfg, params=None: None)
    monkeypatch.setattr(sample, "restore_file", restore_file)
    return done


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and text.strip() == text and text
    return text


# ----------------------------------------------------------------------------------------------- bad input
def _dup_stems(tmp):
    save_png(tmp / "in" / "photo.jpg", 40, 40)
    return {"input": str(tmp / "in")}


def _case_stems(tmp):
    save_png(tmp / "in" / "PHOTO.jpg", 40, 40)  # one folder on macOS / Windows file systems
    return {"input": str(tmp / "in")}


def _empty_folder(tmp):
    (tmp / "empty").mkdir()
    return {"input": str(tmp / "empty")}


def _foreign_in_result_folder(tmp):
    (tmp / "out" / "photo").mkdir(parents=True)
    (tmp / "out" / "photo" / "notes.txt").write_text("the user's")
    return {}


def _finished_single(tmp):
    img = np.zeros((1, SIZE, SIZE, 3), np.float32)
    write_result(tmp / "out" / "photo", ImageResult({"image": "photo.png"}, img, img, None, None, "t"))
    return {}


def _result_path_is_file(tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "photo").write_text("a file")
    return {}


def _output_is_file(tmp):
    (tmp / "out.txt").write_text("a file")
    return {"output": str(tmp / "out.txt")}


def _output_below_file(tmp):
    (tmp / "out.txt").write_text("a file")
    return {"output": str(tmp / "out.txt" / "sub")}


def _unreadable(tmp):
    (tmp / "in" / "photo.png").write_bytes(b"not an image")
    return {}


def _wrong_measurement(tmp):
    save_png(tmp / "in" / "lr.png", SIZE // 2 + 1, SIZE // 2)
    return {"input": str(tmp / "in" / "lr.png"), "input_is_measurement": True}


def _wrong_reference(tmp):
    save_png(tmp / "in" / "lr.png", SIZE // 2, SIZE // 2)
    save_png(tmp / "ref.png", SIZE + 1, SIZE)
    return {"input": str(tmp / "in" / "lr.png"), "input_is_measurement": True, "reference": str(tmp / "ref.png")}


def _not_square(tmp):
    save_png(tmp / "in" / "photo.png", 40, 30)
    return {"resize": "none"}


def _not_a_checkpoint(tmp):
    (tmp / "plain").mkdir()
    (tmp / "plain" / "weights.bin").write_bytes(b"\0" * 16)
    return {"checkpoint": str(tmp / "plain")}


def _other_network(tmp):
    tree = {"encoder": {"conv_in": {"kernel": np.zeros((3, 3, 3, 8), np.float32)}}}
    checkpoints.save_params(tmp / "other", tree, metadata={"part": "autoencoder"})
    return {"checkpoint": str(tmp / "other")}


def _value(**over):
    return lambda tmp: over


# (name, set-up: tmp -> config overrides, exception type, message fragment)
LIBRARY_CASES = [
    ("no input", _value(input=""), ValueError, "set --config.input="),
    ("misspelt input", lambda tmp: {"input": str(tmp / "in" / "phota.png")}, FileNotFoundError,
     "does not exist (did you mean"),
    ("missing folder", lambda tmp: {"input": str(tmp / "nowhere")}, FileNotFoundError, "nowhere does not exist"),
    ("unreadable image", _unreadable, ValueError, "cannot read image"),
    ("same stem twice", _dup_stems, ValueError, "would both write to"),
    ("stems differing in case", _case_stems, ValueError, "would both write to"),
    ("empty folder", _empty_folder, ValueError, "no images"),
    ("output is a file", _output_is_file, ValueError, "is a file; give a folder with --config.output"),
    ("output below a file", _output_below_file, ValueError, "cannot be created"),
    ("read-only output", _value(output="/sys/deqir-out"), ValueError, "cannot write to /sys"),
    ("foreign files in a result folder", _foreign_in_result_folder, FileExistsError, "did not write (notes.txt)"),
    ("result path is a file", _result_path_is_file, ValueError, "is a file, not a result folder"),
    ("finished single image", _finished_single, FileExistsError, "--config.overwrite=True"),
    ("negative sigma_y", _value(sigma_y=-0.1), ValueError, "--config.sigma_y must be a finite noise level >= 0"),
    ("NaN sigma_y", _value(sigma_y=math.nan), ValueError, "--config.sigma_y"),
    ("infinite sigma_y", _value(sigma_y=math.inf), ValueError, "--config.sigma_y"),
    ("timesteps 0", _value(timesteps=0), ValueError, "--config.timesteps must be an integer from 1 to 1000"),
    ("timesteps 1001", _value(timesteps=1001), ValueError, "--config.timesteps"),
    ("negative etw", _value(etw=-1.0), ValueError, "--config.etw"),
    ("negative tol", _value(**{"solver.tol": -1e-3}), ValueError, "--config.solver: solver settings: tol"),
    ("anderson max_iter 1", _value(**{"solver.method": "anderson", "solver.max_iter": 1, "solver.stop": "residual",
                                      "solver.row_tol": 0.0}), ValueError, "--config.solver: solver settings: max_iter"),
    ("unknown solver", _value(**{"solver.method": "newton"}), ValueError, "method must be one of"),
    ("unknown sampler", _value(sampler="fast"), ValueError, "--config.sampler must be one of"),
    ("unknown resize", _value(resize="stretch"), ValueError, "--config.resize must be one of"),
    ("too small for SSIM", _value(image_size=8), ValueError, "smaller than SSIM's 11x11 window"),
    ("not square with resize none", _not_square, ValueError, "photo.png: image is 30x40"),
    ("measurement of the wrong size", _wrong_measurement, ValueError, "lr.png"),
    ("reference of the wrong size", _wrong_reference, ValueError, "ref.png: image is 32x33"),
    ("negative init_opt steps", _value(**{"init_opt.steps": -1}), ValueError, "--config.init_opt.steps"),
    ("oracle loss without ground truth", lambda tmp: {**_wrong_measurement(tmp), "init_opt.steps": 2,
                                                      "init_opt.loss": "oracle"}, ValueError, "needs the ground truth"),
    ("reference loss without image", _value(**{"init_opt.steps": 2, "init_opt.loss": "reference"}), ValueError,
     "--config.init_opt.reference=IMAGE"),
]


@pytest.mark.parametrize("name,setup,error,fragment", LIBRARY_CASES, ids=[c[0] for c in LIBRARY_CASES])
def test_bad_input_is_one_line_before_the_compute(name, setup, error, fragment, tmp_path, monkeypatch, no_compute):
    monkeypatch.chdir(tmp_path)  # a fresh run folder would appear here
    save_png(tmp_path / "in" / "photo.png", 40, 40)
    over = setup(tmp_path)
    cfg = base_config(tmp_path, **over)
    before = snapshot(tmp_path)
    with pytest.raises(error) as err:
        sample.restore_images(cfg, progress=False, log=lambda msg: None)
    assert fragment in one_line(err.value)
    assert snapshot(tmp_path) == before  # nothing written, deleted or touched; no run folder


CHECKPOINT_CASES = [
    ("missing checkpoint", _value(checkpoint="/nonexistent/prior"), FileNotFoundError, "does not exist"),
    ("not a checkpoint", _not_a_checkpoint, ValueError, "is not a parameter checkpoint"),
    ("another network's weights", _other_network, ValueError, "does not fit the preset's model"),
]


@pytest.mark.parametrize("name,setup,error,fragment", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_bad_checkpoint_is_one_line(name, setup, error, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_png(tmp_path / "in" / "photo.png", 40, 40)
    cfg = base_config(tmp_path, **setup(tmp_path), output="")
    before = snapshot(tmp_path)
    with pytest.raises(error) as err:
        sample.restore_images(cfg, progress=False)
    assert fragment in one_line(err.value) and "--config.checkpoint=DIR" in str(err.value)
    assert snapshot(tmp_path) == before and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_resshift_checkpoint_is_refused_in_one_line(load_fixture, tmp_path, monkeypatch):
    """The other package's converted weights (the tiny ResShift UNet, as resshift_jax.convert writes them)."""
    from resshift_fixture_utils import converted_tiny

    (tmp_path / "resshift").mkdir()
    converted_tiny(load_fixture, tmp_path / "resshift")
    monkeypatch.chdir(tmp_path)
    save_png(tmp_path / "in" / "photo.png", 40, 40)
    cfg = base_config(tmp_path, checkpoint=str(tmp_path / "resshift" / "unet"), output="")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError) as err:
        sample.restore_images(cfg, progress=False)
    assert "does not fit the preset's model" in one_line(err.value) and "--config.checkpoint=DIR" in str(err.value)
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------- run behaviour
def _folder_run(tmp_path, names=("a", "b", "c")) -> None:
    for i, name in enumerate(names):
        save_png(tmp_path / "in" / f"{name}.png", 40, 40, seed=i)


def test_rerun_skips_finished_redoes_unfinished_and_cleans_our_leftovers(tmp_path, monkeypatch):
    _folder_run(tmp_path)
    out = tmp_path / "out"
    img = np.zeros((1, SIZE, SIZE, 3), np.float32)
    write_result(out / "a", ImageResult({"image": "a.png"}, img, img, None, None, "t"))  # finished
    (out / "b").mkdir()
    save_png(out / "b" / "restored.png", 8, 8)  # a run killed before metrics.json (older, non-atomic runs)
    (out / ".c.partial-0123456789ab").mkdir()  # a killed run's staging folder
    (out / ".c.partial-0123456789ab" / "restored.png").write_bytes(b"half")
    (out / "user-notes.txt").write_text("kept")  # not ours: never touched
    before = snapshot(tmp_path, exclude=out)
    kept = snapshot(out / "a") | {"notes": (out / "user-notes.txt").stat().st_mtime_ns}
    done, logged = fake_compute(monkeypatch), []
    records = sample.restore_images(base_config(tmp_path, input=str(tmp_path / "in")), progress=False,
                                    log=logged.append)
    assert done == ["b.png", "c.png"] and [r["index"] for r in records] == [1, 2]  # seeds keep the file's index
    assert logged == ["skipped 1 finished image(s) (pass --config.overwrite=True to redo them)"]
    assert snapshot(out / "a") | {"notes": (out / "user-notes.txt").stat().st_mtime_ns} == kept
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c", "user-notes.txt"]
    assert (out / "b" / "metrics.json").is_file() and (out / "c" / "metrics.json").is_file()
    assert snapshot(tmp_path, exclude=out) == before
    # overwrite: every image is redone, the folders swapped in whole
    done.clear()
    sample.restore_images(base_config(tmp_path, input=str(tmp_path / "in"), overwrite=True), progress=False,
                          log=logged.append)
    assert done == ["a.png", "b.png", "c.png"] and len(logged) == 1
    assert json.loads((out / "a" / "metrics.json").read_text())["index"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c", "user-notes.txt"]


def test_a_run_that_fails_at_the_first_image_leaves_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _folder_run(tmp_path)
    fake_compute(monkeypatch, {0: anderson.SolverDivergedError("fixed-point solve diverged at map evaluation 3")})
    before = snapshot(tmp_path)
    with pytest.raises(anderson.SolverDivergedError):
        sample.restore_images(base_config(tmp_path, input=str(tmp_path / "in"), output=""), progress=False)
    assert snapshot(tmp_path) == before and not (tmp_path / "outputs").exists()
    fake_compute(monkeypatch)  # and a run that works makes its fresh folder as before
    (record, *_) = sample.restore_images(base_config(tmp_path, input=str(tmp_path / "in"), output=""),
                                         progress=False)
    assert pathlib.Path(record["folder"]).parent.parent == (tmp_path / "outputs" / "deqir").resolve()


def test_ctrl_c_keeps_finished_images_and_a_rerun_continues(tmp_path, monkeypatch):
    _folder_run(tmp_path)
    out = tmp_path / "out"
    fake_compute(monkeypatch, {1: KeyboardInterrupt()})
    with pytest.raises(sample.Interrupted) as err:
        sample.restore_images(base_config(tmp_path, input=str(tmp_path / "in")), progress=False)
    assert one_line(err.value) == (f"interrupted after 1 of 3 image(s); finished results are in {out}; rerun with "
                                   f"--config.output={out} to continue")
    assert sorted(p.name for p in out.iterdir()) == ["a"] and (out / "a" / "metrics.json").is_file()
    done, logged = fake_compute(monkeypatch), []
    sample.restore_images(base_config(tmp_path, input=str(tmp_path / "in")), progress=False, log=logged.append)
    assert done == ["b.png", "c.png"] and logged[0].startswith("skipped 1 finished image(s)")


def test_ctrl_c_while_writing_leaves_no_half_written_folder(tmp_path, monkeypatch):
    _folder_run(tmp_path, ["a"])
    fake_compute(monkeypatch)

    def interrupted_json(path, data, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ircore.files.write_json", interrupted_json)  # the last file of the folder
    with pytest.raises(sample.Interrupted, match="after 0 of 1 image.*nothing was written"):
        sample.restore_images(base_config(tmp_path, input=str(tmp_path / "in")), progress=False)
    assert not (tmp_path / "out").exists()  # staging folder removed, the output folder we made too


def test_ctrl_c_is_held_back_until_an_image_folder_is_in_place():
    """The rename of an image's folder and its count are one step: a SIGINT in between is delivered after it."""
    handler, reached = signal.getsignal(signal.SIGINT), []
    with pytest.raises(KeyboardInterrupt):
        with sample.sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached.append("rest of the block")
    assert reached == ["rest of the block"] and signal.getsignal(signal.SIGINT) is handler


# ----------------------------------------------------------------------------------------------- command line
def run_cli(tmp_path: pathlib.Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deqir_jax.sample", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str, code: int = 1) -> None:
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("deqir_jax.sample:")]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr[-3000:]


SR_X4 = f"--config={REPO / 'configs/deqir/sr_x4.py'}"
CLI_QUICK = [
    ("same stem twice", lambda tmp: [f"--config.input={tmp / 'in'}"], "would both write to"),
]
CLI_SLOW = [
    ("negative sigma_y", lambda tmp: [f"--config.input={tmp / 'in' / 'photo.png'}", "--config.sigma_y=-0.5"],
     "--config.sigma_y must be a finite noise level >= 0"),
    ("misspelt input", lambda tmp: [f"--config.input={tmp / 'in' / 'photo.pgn'}"], "did you mean"),
    ("output is a file", lambda tmp: [f"--config.input={tmp / 'in' / 'photo.png'}", f"--config.output={tmp / 'f.txt'}"],
     "is a file; give a folder"),
    ("read-only output", lambda tmp: [f"--config.input={tmp / 'in' / 'photo.png'}", "--config.output=/sys/deqir"],
     "cannot write to /sys"),
    ("tol -1", lambda tmp: [f"--config.input={tmp / 'in' / 'photo.png'}", "--config.solver.tol=-1"],
     "--config.solver: solver settings: tol must be >= 0"),
    ("timesteps 0", lambda tmp: [f"--config.input={tmp / 'in' / 'photo.png'}", "--config.timesteps=0"],
     "--config.timesteps"),
    ("not a checkpoint", lambda tmp: [f"--config.input={tmp / 'in' / 'photo.png'}", f"--config.checkpoint={tmp / 'in'}"],
     "is not a parameter checkpoint"),
    ("unreadable image", lambda tmp: [f"--config.input={tmp / 'in' / 'broken.png'}"], "cannot read image"),
]


def _cli_tree(tmp_path: pathlib.Path) -> None:
    save_png(tmp_path / "in" / "photo.png", 40, 40)
    save_png(tmp_path / "in" / "photo.jpg", 40, 40)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "f.txt").write_text("a file")


def _cli_case(tmp_path, args, fragment):
    _cli_tree(tmp_path)
    before = snapshot(tmp_path)
    proc = run_cli(tmp_path, SR_X4, *args(tmp_path), f"--config.image_size={SIZE}")
    assert_one_line_error(proc, fragment)
    assert snapshot(tmp_path) == before  # no run folder, nothing else touched


@pytest.mark.parametrize("name,args,fragment", CLI_QUICK, ids=[c[0] for c in CLI_QUICK])
def test_cli_bad_input(name, args, fragment, tmp_path):
    _cli_case(tmp_path, args, fragment)


@pytest.mark.slow
@pytest.mark.parametrize("name,args,fragment", CLI_SLOW, ids=[c[0] for c in CLI_SLOW])
def test_cli_bad_input_slow(name, args, fragment, tmp_path):
    _cli_case(tmp_path, args, fragment)


@pytest.fixture(scope="module")
def tiny_checkpoint(load_fixture, tmp_path_factory) -> pathlib.Path:
    from deqir_fixture_utils import load_tiny_unet

    _, params = load_tiny_unet(load_fixture)
    ckpt = tmp_path_factory.mktemp("prior") / "tiny_unet"
    checkpoints.save_params(ckpt, params)
    return ckpt


@pytest.mark.slow
def test_cli_ctrl_c_during_sampling_is_one_line_exit_130(tiny_checkpoint, tmp_path):
    """SIGINT once the first image is written: exit 130, one line, finished folders complete, nothing half
    written; the rerun skips the finished images and completes the rest."""
    names = [f"img{i}" for i in range(8)]
    for i, name in enumerate(names):
        save_png(tmp_path / "in" / f"{name}.png", 40, 40, seed=i)
    cfg_file = tmp_path / "tiny.py"
    cfg_file.write_text(
        "import ml_collections\nfrom ircore.config_utils import load_config_file\n"
        "def get_config():\n"
        f"    cfg = load_config_file({str(REPO / 'configs/deqir/sr_x2.py')!r})\n"
        f"    cfg.model = ml_collections.ConfigDict({dict(_MODEL_CFG)!r})\n"
        f"    cfg.image_size = {SIZE}\n    cfg.timesteps = 10\n    cfg.score_lpips = False\n    return cfg\n")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "deqir_jax.sample", f"--config={cfg_file}", f"--config.checkpoint={tiny_checkpoint}",
            f"--config.input={tmp_path / 'in'}", f"--config.output={out}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 600
    while not (out / "img0" / "metrics.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("deqir_jax.sample:")]
    assert len(lines) == 1 and lines[0].startswith("deqir_jax.sample: interrupted after "), stderr[-3000:]
    finished = int(lines[0].split("interrupted after ")[1].split(" ")[0])
    assert 1 <= finished < len(names) and f"of {len(names)} image(s); finished results are in {out}" in lines[0]
    folders = sorted(p.name for p in out.iterdir())
    assert folders == names[:finished]  # no staging folder, no half-written image folder
    assert all((out / n / "metrics.json").is_file() for n in folders)
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"skipped {finished} finished image(s) (pass --config.overwrite=True to redo them)" in rerun.stdout
    assert sorted(p.name for p in out.iterdir()) == names
