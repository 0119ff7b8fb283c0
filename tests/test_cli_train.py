"""The train CLIs (``deqir_jax.train``, ``resshift_jax.train``) with bad input: one ``error:`` line naming the
problem and the fix, a non-zero exit, and nothing outside the run's own workdir / export changed.

Quick: the library checks that raise (paths, network on resume, data sources, the exit-status mapping, the
SIGINT handler) and one CLI case. Slow: the subprocess table for both packages, SIGINT / SIGTERM / a second
SIGINT sent to a running CLI, and an unreadable image met mid-run.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from ircore import data, photos, train_cli, train_config, trainer
from ircore.config_utils import load_config_file

REPO = pathlib.Path(__file__).resolve().parents[1]
DEQIR_CONFIG = REPO / "configs" / "deqir" / "embedded_prior.py"
RESSHIFT_CONFIG = REPO / "configs" / "resshift" / "tiny_train.py"
DEQIR_TINY = ["--config.model.num_channels=32", "--config.model.channel_mult=1,2", "--config.model.num_res_blocks=1",
              "--config.model.image_size=16", "--config.data.crop_size=16"]


def snapshot(root: pathlib.Path, skip: tuple[str, ...] = ()) -> dict:
    """``{relative path: (is_dir, size, mtime_ns)}`` of everything below ``root`` except the ``skip`` entries
    (top-level names: the run's own workdir / export) and their contents."""
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] in skip:
            continue
        st = path.lstat()
        out[str(rel)] = (path.is_dir(), st.st_size if not path.is_dir() else 0, st.st_mtime_ns)
    return out


def write_images(folder: pathlib.Path, n: int = 3, size: int = 40) -> pathlib.Path:
    """``n`` small readable PNGs (cheap stand-ins for photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = (pathlib.Path(__file__).read_bytes()[i * 97:] * 64)[: size * size * 3]
        Image.frombytes("RGB", (size, size), pixels).save(folder / f"img{i}.png")
    return folder


def deqir_cfg():
    cfg = load_config_file(DEQIR_CONFIG, "smoke")
    cfg.model.update({"num_channels": 32, "channel_mult": "1,2", "num_res_blocks": 1, "image_size": 16})
    cfg.data.crop_size = 16
    return cfg


# ----------------------------------------------------------------------------------------------- paths (quick)
def _paths_export_is_workdir(tmp):
    (tmp / "run").mkdir()
    (tmp / "run" / "metrics.jsonl").write_text("{}\n")
    return tmp / "run", str(tmp / "run"), True


def _paths_export_inside_workdir(tmp):
    (tmp / "run").mkdir()
    return tmp / "run", str(tmp / "run" / "export"), True


def _paths_workdir_inside_export(tmp):
    return tmp / "out" / "run", str(tmp / "out"), False


def _paths_export_via_symlink(tmp):
    (tmp / "run").mkdir()
    (tmp / "link").symlink_to(tmp / "run")
    return tmp / "run", str(tmp / "link"), True


def _paths_workdir_is_file(tmp):
    (tmp / "run").write_text("mine")
    return tmp / "run", None, False


def _paths_workdir_parent_is_file(tmp):
    (tmp / "notes").write_text("mine")
    return tmp / "notes" / "run", None, False


def _paths_export_exists(tmp):
    (tmp / "prior").mkdir()
    return tmp / "run", str(tmp / "prior"), False


def _paths_export_is_file(tmp):
    (tmp / "prior").write_text("mine")
    return tmp / "run", str(tmp / "prior"), True


def _paths_export_parent_is_file(tmp):
    (tmp / "notes").write_text("mine")
    return tmp / "run", str(tmp / "notes" / "prior"), False


def _paths_export_holds_foreign_files(tmp):
    (tmp / "prior").mkdir()
    (tmp / "prior" / "thesis.tex").write_text("mine")
    return tmp / "run", str(tmp / "prior"), True


PATH_CASES = [
    (_paths_export_is_workdir, "is the --workdir"),
    (_paths_export_inside_workdir, "is inside the --workdir"),
    (_paths_workdir_inside_export, "contains the --workdir"),
    (_paths_export_via_symlink, "is the --workdir"),
    (_paths_workdir_is_file, "is a file, not a folder; pick another --workdir"),
    (_paths_workdir_parent_is_file, "notes is a file; pick another --workdir"),
    (_paths_export_exists, "already exists; pass --overwrite"),
    (_paths_export_is_file, "is a file, not a folder; pick another --export"),
    (_paths_export_parent_is_file, "notes is a file; pick another --export"),
    (_paths_export_holds_foreign_files, "holds files this program did not write (thesis.tex)"),
]


@pytest.mark.parametrize("setup, fragment", PATH_CASES, ids=[c[0].__name__[7:] for c in PATH_CASES])
def test_bad_paths_are_refused_before_anything_is_written(tmp_path, setup, fragment):
    workdir, export, overwrite = setup(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(trainer.TrainSetupError) as err:
        train_cli.check_paths(workdir, export, overwrite=overwrite)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert snapshot(tmp_path) == before


def test_permissions_are_checked(tmp_path, monkeypatch):
    """Read-only parent / unreadable workdir (os.access is faked: the tests may run as root)."""
    (tmp_path / "locked").mkdir()
    (tmp_path / "run").mkdir()
    locked = {tmp_path / "locked", tmp_path / "run"}
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if pathlib.Path(p) in locked else real(p, mode))
    with pytest.raises(trainer.TrainSetupError, match="locked is not writable; pick another --workdir"):
        train_cli.check_paths(tmp_path / "locked" / "run")
    with pytest.raises(trainer.TrainSetupError, match="not readable and writable"):
        train_cli.check_paths(tmp_path / "run")
    with pytest.raises(trainer.TrainSetupError, match="locked is not writable; pick another --export"):
        train_cli.check_paths(tmp_path / "new", str(tmp_path / "locked" / "prior"))


def test_good_paths_pass(tmp_path):
    (tmp_path / "prior").mkdir()
    train_cli.check_paths(tmp_path / "run", str(tmp_path / "prior"), overwrite=True)
    train_cli.check_paths(tmp_path / "a" / "b" / "run", str(tmp_path / "run_export"))
    (tmp_path / "runs").mkdir()
    train_cli.check_paths(tmp_path / "runs" / "a", str(tmp_path / "runs" / "a_export"))  # siblings are fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior", "runs"]


# ----------------------------------------------------------------------------------------------- network (quick)
def test_network_differences_name_the_fields():
    saved = {"model": {"channels": 64, "depth": 2, "attn": [8]}, "train": {"lr": 1.0}}
    now = {"model": {"channels": 32, "depth": 3, "attn": [8], "extra": True}, "train": {"lr": 2.0}}
    assert train_cli.network_differences(saved, now, ("model",)) == [
        ("model.channels", 64, 32), ("model.depth", 2, 3), ("model.extra", "<unset>", True)]
    assert train_cli.network_differences(saved, now, ("train",)) == [("train.lr", 1.0, 2.0)]
    assert train_cli.network_differences(saved, saved, ("model", "train")) == []
    assert train_cli.network_differences({}, now, ("autoencoder",)) == []
    assert train_cli.network_differences({"autoencoder": {"a": 1}}, now, ("autoencoder",)) == [
        ("autoencoder.a", 1, "<unset>")]


def _trained_workdir(tmp_path, cfg):
    work = tmp_path / "run"
    work.mkdir(parents=True)
    (work / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    (work / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "loss": 1.0}\n')
    return work


def test_changed_network_on_resume_is_refused_and_config_json_kept(tmp_path):
    work = _trained_workdir(tmp_path, deqir_cfg())
    before = snapshot(tmp_path)
    cfg = deqir_cfg()
    cfg.model.num_channels = 64
    cfg.model.num_res_blocks = 2
    with pytest.raises(trainer.TrainSetupError) as err:
        train_cli.check_network(cfg, work, ("model", "diffusion"))
    assert str(err.value) == (f"workdir {work} was trained with model.num_channels=32, model.num_res_blocks=1; "
                              f"this config has 64, 2: use another --workdir or the config it was trained with")
    cfg = deqir_cfg()
    cfg.diffusion.beta_end = 0.03
    with pytest.raises(trainer.TrainSetupError, match="diffusion.beta_end=0.02; this config has 0.03"):
        train_cli.check_network(cfg, work, ("model", "diffusion"))
    assert snapshot(tmp_path) == before


def test_train_and_data_settings_may_change_on_resume(tmp_path):
    work = _trained_workdir(tmp_path, deqir_cfg())
    cfg = deqir_cfg()
    cfg.train.update({"total_steps": 10_000, "lr": 1e-5, "log_every": 7, "checkpoint_every": 11})
    cfg.data.update({"source": "folder", "folder": "/elsewhere"})
    train_cli.check_network(cfg, work, ("model", "diffusion"))


def test_other_models_workdir_is_refused(tmp_path):
    resshift = load_config_file(RESSHIFT_CONFIG)
    work = _trained_workdir(tmp_path, resshift)
    with pytest.raises(trainer.TrainSetupError, match="holds a run of another model 'tiny_train_bicsr'"):
        train_cli.check_network(deqir_cfg(), work, ("model", "diffusion"))
    with pytest.raises(trainer.TrainSetupError, match="holds a run of another model 'deqir_embedded_prior'"):
        train_cli.check_network(resshift, _trained_workdir(tmp_path / "x", deqir_cfg()),
                                ("model", "autoencoder", "diffusion"))


def test_checkpoint_record_decides_without_config_json(tmp_path):
    """An older workdir with checkpoints but no config.json: the newest checkpoint's record is compared."""
    saved = deqir_cfg()
    record = tmp_path / "run" / "checkpoints" / "5" / "meta" / "metadata"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"step": 5, "config": json.loads(saved.to_json_best_effort())}))
    cfg = deqir_cfg()
    cfg.model.num_channels = 48
    with pytest.raises(trainer.TrainSetupError, match="model.num_channels=32; this config has 48"):
        train_cli.check_network(cfg, tmp_path / "run", ("model",))
    train_cli.check_network(saved, tmp_path / "run", ("model",))
    train_cli.check_network(cfg, tmp_path / "fresh", ("model",))  # no workdir yet: nothing to compare


def test_foreign_config_json_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("[1, 2")
    with pytest.raises(trainer.TrainSetupError, match="not a config this trainer wrote: pick another --workdir"):
        train_cli.check_network(deqir_cfg(), tmp_path / "run", ("model",))
    (tmp_path / "run" / "config.json").write_text("[1, 2]")
    with pytest.raises(trainer.TrainSetupError, match="not a config this trainer wrote"):
        train_cli.check_network(deqir_cfg(), tmp_path / "run", ("model",))


# ----------------------------------------------------------------------------------------------- data (quick)
def _data_cfg(**kw):
    cfg = train_config.data_defaults()
    cfg.update(kw)
    return cfg


def _data_empty(tmp):
    (tmp / "imgs").mkdir()
    (tmp / "imgs" / "notes.txt").write_text("not an image")
    return _data_cfg(folder=str(tmp / "imgs"))


def _data_unreadable(tmp):
    (tmp / "imgs").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp / "imgs" / name).write_bytes(b"not really an image")
    return _data_cfg(folder=str(tmp / "imgs"))


def _data_missing(tmp):
    return _data_cfg(folder=str(tmp / "nowhere"))


def _data_unset(tmp):  # noqa: ARG001
    return _data_cfg(folder="")


def _data_bad_source(tmp):  # noqa: ARG001
    return _data_cfg(source="imagenet")


def _data_bad_photo_split(tmp):  # noqa: ARG001
    return _data_cfg(source="photos", photos_split="test")


DATA_CASES = [
    (_data_empty, "no images (.png"),
    (_data_unreadable, "cannot read training image"),
    (_data_missing, "does not exist: point --config.data.folder at a folder of images"),
    (_data_unset, "set --config.data.folder=DIR"),
    (_data_bad_source, "data.source must be 'folder', 'tfds' or 'photos'"),
    (_data_bad_photo_split, "data.photos_split must be one of"),
]


@pytest.mark.parametrize("setup, fragment", DATA_CASES, ids=[c[0].__name__[6:] for c in DATA_CASES])
def test_data_problems_are_one_line(tmp_path, setup, fragment):
    cfg = setup(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(data.DataError) as err:
        data.open_training_source(cfg)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert snapshot(tmp_path) == before


def test_photos_without_the_embedded_extra(monkeypatch):
    real = photos.importlib.resources.files

    def files(package):
        if package.startswith(("skimage", "sklearn")):
            raise ModuleNotFoundError(f"No module named {package!r}")
        return real(package)

    monkeypatch.setattr(photos.importlib.resources, "files", files)
    with pytest.raises(data.DataError) as err:
        data.open_training_source(_data_cfg(source="photos"))
    assert "pip install -e '.[embedded]'" in str(err.value) and "--config.data.source=folder" in str(err.value)


# ----------------------------------------------------------------------------------------------- exit status (quick)
def _raise(exc):
    def fn():
        raise exc
    return fn


REPORT_CASES = [
    (trainer.Stopped("SIGINT", 7, "W"), 130, "stopped by SIGINT at step 7; checkpoint saved in W; rerun the same "
                                              "command to resume"),
    (trainer.Stopped("SIGTERM", 3, "W"), 143, "stopped by SIGTERM at step 3; checkpoint saved in W"),
    (KeyboardInterrupt(), 130, "interrupted by SIGINT outside the train loop"),
    (data.DataError("cannot read training image x.png (bad): replace"), 1, "error: cannot read training image"),
    (trainer.TrainSetupError("train.global_batch 6 must be\ndivisible"), 1,
     "error: train.global_batch 6 must be divisible"),
    (FileExistsError("export folder P already exists"), 1, "error: export folder P already exists"),
]


@pytest.mark.parametrize("exc, code, fragment", REPORT_CASES, ids=[type(c[0]).__name__ + str(c[1]) for c in REPORT_CASES])
def test_run_reporting_maps_outcomes_to_one_line_and_exit_status(capsys, exc, code, fragment):
    with pytest.raises(SystemExit) as stop:
        train_cli.run_reporting(_raise(exc), (FileExistsError,), "W")
    assert stop.value.code == code
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_run_reporting_passes_other_errors_and_success_through():
    with pytest.raises(ZeroDivisionError):  # a bug, not a user mistake: its traceback is wanted
        train_cli.run_reporting(_raise(ZeroDivisionError()), (FileExistsError,), "W")
    assert train_cli.run_reporting(lambda: 5, (), "W") is None


def test_sigint_handler_sets_the_stop_flag_then_a_second_one_aborts(capfd):
    before = signal.getsignal(signal.SIGINT)
    aborted = []
    watcher = trainer.PreemptionWatcher(on_second_sigint=lambda: aborted.append(True))
    try:
        assert not watcher.reached(0)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert watcher.reached(0) and watcher.signal_name == "SIGINT" and not aborted
        assert "SIGINT: saving the current step and stopping" in capfd.readouterr().err
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert aborted == [True]
        os.kill(os.getpid(), signal.SIGTERM)  # a later SIGTERM does not rename the stop
        time.sleep(0.01)
        assert watcher.signal_name == "SIGINT" and aborted == [True]
    finally:
        watcher.close()
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("update, fragment", [
    ({"progress_bar": "yes"}, "train.progress_bar must be one of"),
    ({"lr": -1.0}, "bad learning-rate settings train.lr=-1.0"),
    ({"total_steps": 0}, "train.total_steps=0"),
    ({"lr_schedule": "step"}, "train.lr_schedule must be 'cosine' or 'constant'"),
    ({"global_batch": 6, "accum_steps": 4}, "train.global_batch 6 must be divisible by devices x train.accum_steps"),
    ({"accum_steps": 0}, "train.accum_steps = 8 x 0"),
])
def test_train_section_is_checked_before_any_model(update, fragment):
    cfg = train_config.train_defaults()
    cfg.update({"global_batch": 16, **update})
    with pytest.raises(trainer.TrainSetupError, match=fragment.replace("(", r"\(")):
        trainer.check_train_config(cfg, devices=8)
    trainer.check_train_config(train_config.train_defaults(), devices=8)


# ----------------------------------------------------------------------------------------------- the CLIs
def _cli(package: str, tmp: pathlib.Path, *extra: str) -> list[str]:
    if package == "deqir":
        return [sys.executable, "-m", "deqir_jax.train", f"--config={DEQIR_CONFIG}:smoke", *DEQIR_TINY, *extra]
    return [sys.executable, "-m", "resshift_jax.train", f"--config={RESSHIFT_CONFIG}",
            f"--config.data.folder={tmp / 'imgs'}", *extra]


def _run(args: list[str], tmp: pathlib.Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def _assert_one_error_line(proc: subprocess.CompletedProcess, fragment: str, code: int = 1) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_export_equal_to_workdir_with_overwrite_keeps_the_run(tmp_path):
    """The data-loss case of the issue (it deleted the whole run and exited 0): refused, nothing touched."""
    run = tmp_path / "run"
    (run / "checkpoints" / "3").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 3}\n')
    (run / "config.json").write_text(deqir_cfg().to_json_best_effort(indent=2))
    before = snapshot(tmp_path)
    proc = _run(_cli("deqir", tmp_path, "--workdir=run", "--export=run", "--overwrite"), tmp_path)
    _assert_one_error_line(proc, "--export run is the --workdir run; the export must be a separate folder")
    assert snapshot(tmp_path) == before


def _case_other_model(tmp, package):
    other = load_config_file(RESSHIFT_CONFIG) if package == "deqir" else deqir_cfg()
    _trained_workdir(tmp, other)
    return ["--workdir=run"], "holds a run of another model"


def _case_changed_network(tmp, package):
    cfg = deqir_cfg() if package == "deqir" else load_config_file(RESSHIFT_CONFIG)
    if package == "deqir":
        cfg.model.num_channels = 64
    else:
        cfg.model.model_channels = 64
    cfg.data.folder = str(tmp / "imgs")
    _trained_workdir(tmp, cfg)
    field = "model.num_channels" if package == "deqir" else "model.model_channels"
    return ["--workdir=run"], f"was trained with {field}=64; this config has 32"


def _case_export_inside(tmp, package):  # noqa: ARG001
    return ["--workdir=run", "--export=run/prior"], "is inside the --workdir"


def _case_workdir_inside_export(tmp, package):  # noqa: ARG001
    return ["--workdir=prior/run", "--export=prior", "--overwrite"], "contains the --workdir"


def _case_workdir_is_file(tmp, package):  # noqa: ARG001
    (tmp / "run").write_text("my notes")
    return ["--workdir=run"], "is a file, not a folder"


def _case_workdir_parent_is_file(tmp, package):  # noqa: ARG001
    (tmp / "notes").write_text("my notes")
    return ["--workdir=notes/run"], "notes is a file; pick another --workdir"


def _case_export_exists(tmp, package):  # noqa: ARG001
    (tmp / "prior").mkdir()
    (tmp / "prior" / "mine.txt").write_text("keep me")
    return ["--workdir=run", "--export=prior"], "already exists; pass --overwrite"


def _case_empty_folder(tmp, package):
    (tmp / "empty").mkdir()
    flags = ["--config.data.source=folder"] if package == "deqir" else []
    return ["--workdir=run", *flags, f"--config.data.folder={tmp / 'empty'}"], "no images (.png"


def _case_unreadable_folder(tmp, package):
    (tmp / "bad").mkdir()
    (tmp / "bad" / "a.png").write_bytes(b"\x89PNG but not really")
    flags = ["--config.data.source=folder"] if package == "deqir" else []
    return ["--workdir=run", *flags, f"--config.data.folder={tmp / 'bad'}"], "cannot read training image"


def _case_missing_folder(tmp, package):
    flags = ["--config.data.source=folder"] if package == "deqir" else []
    return ["--workdir=run", *flags, f"--config.data.folder={tmp / 'nowhere'}"], "does not exist"


def _case_bad_lr(tmp, package):  # noqa: ARG001
    return ["--workdir=run", "--config.train.lr=-1"], "bad learning-rate settings train.lr=-1.0"


def _case_bad_batch(tmp, package):  # noqa: ARG001
    return (["--workdir=run", "--config.train.global_batch=5", "--config.train.accum_steps=2"],
            "train.global_batch 5 must be divisible by devices x train.accum_steps = 1 x 2")


def _case_bad_progress(tmp, package):  # noqa: ARG001
    return ["--workdir=run", "--config.train.progress_bar=yes"], "train.progress_bar must be one of"


CLI_CASES = [_case_other_model, _case_changed_network, _case_export_inside, _case_workdir_inside_export,
             _case_workdir_is_file, _case_workdir_parent_is_file, _case_export_exists, _case_empty_folder,
             _case_unreadable_folder, _case_missing_folder, _case_bad_lr, _case_bad_batch, _case_bad_progress]


@pytest.mark.slow
@pytest.mark.parametrize("package", ["deqir", "resshift"])
@pytest.mark.parametrize("case", CLI_CASES, ids=[c.__name__[6:] for c in CLI_CASES])
def test_cli_bad_input_table(tmp_path, package, case):
    """Each case: exit 1, one ``error:`` line with the fragment, and not a byte changed anywhere (these all fail
    at set-up, so not even the workdir is created or touched)."""
    write_images(tmp_path / "imgs")
    argv, fragment = case(tmp_path, package)
    before = snapshot(tmp_path)
    proc = _run(_cli(package, tmp_path, *argv), tmp_path)
    _assert_one_error_line(proc, fragment)
    assert snapshot(tmp_path) == before


def _start(args: list[str], tmp: pathlib.Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.Popen(args, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished_steps(workdir: pathlib.Path) -> list[str]:
    """The step folders of ``workdir/checkpoints`` in step order (orbax's temporary folders are not steps)."""
    return sorted((p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()), key=int)


@pytest.mark.slow
@pytest.mark.parametrize("package, signum, code", [("deqir", signal.SIGINT, 130), ("resshift", signal.SIGINT, 130),
                                                   ("deqir", signal.SIGTERM, 143)])
def test_cli_signal_saves_says_so_and_resumes(tmp_path, package, signum, code):
    write_images(tmp_path / "imgs")
    (tmp_path / "keep.txt").write_text("not the run's")
    args = _cli(package, tmp_path, "--workdir=run", "--export=prior", "--config.train.total_steps=1000",
                "--config.train.checkpoint_every=1000", "--config.train.log_every=1")
    before = snapshot(tmp_path)
    proc = _start(args, tmp_path)
    for line in proc.stdout:
        if line.startswith("step 2 "):
            proc.send_signal(signum)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-3000:]
    name = signal.Signals(signum).name
    assert "Traceback" not in err + out
    last = [line for line in err.splitlines() if line.strip()][-1]
    step = int(last.split(" at step ")[1].split(";")[0])
    assert last == f"stopped by {name} at step {step}; checkpoint saved in run; rerun the same command to resume"
    assert step >= 2 and _finished_steps(tmp_path / "run") == [str(step)]
    assert not (tmp_path / "prior").exists()  # a stopped run exports nothing
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["total_steps"] == 1000
    assert snapshot(tmp_path, skip=("run",)) == before
    again = _run(_cli(package, tmp_path, "--workdir=run", f"--config.train.total_steps={step + 1}",
                      "--config.train.checkpoint_every=1000"), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from step {step}" in again.stdout


@pytest.mark.slow
def test_cli_second_sigint_during_the_save_leaves_no_half_checkpoint(tmp_path):
    """Ctrl-C, then Ctrl-C again as soon as orbax's temporary save folder appears: exit 130 with its line; the
    checkpoints folder holds only finished steps (the temporary one, if left, is not a step and is cleaned up
    by the next run), and the rerun resumes from a finished step or starts afresh."""
    proc = _start(_cli("deqir", tmp_path, "--workdir=run", "--config.train.total_steps=1000",
                       "--config.train.checkpoint_every=1000", "--config.train.async_checkpoints=True"), tmp_path)
    for line in proc.stdout:
        if line.startswith("step 2 "):
            proc.send_signal(signal.SIGINT)
            break
    ckpts, deadline = tmp_path / "run" / "checkpoints", time.time() + 60
    while time.time() < deadline and proc.poll() is None and not any(
            "tmp" in p.name for p in ckpts.iterdir()):
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("SIGINT: saving")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    print("outcome:", lines[0])  # which path the timing took (shown with -s)
    assert lines[0].startswith(("stopped by a second SIGINT: the stop save is abandoned",
                                "stopped by SIGINT at step")), lines
    assert lines[0].endswith("rerun the same command to resume from the newest complete checkpoint in run") or \
        lines[0].endswith("rerun the same command to resume"), lines
    for step in _finished_steps(tmp_path / "run"):
        assert (ckpts / step / "commit_success.txt").is_file() or (ckpts / step / "_CHECKPOINT_METADATA").is_file()
    again = _run(_cli("deqir", tmp_path, "--workdir=run", "--config.train.total_steps=10"), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _finished_steps(tmp_path / "run")[-1] == "10"
    assert not any("tmp" in p.name for p in ckpts.iterdir())


@pytest.mark.slow
def test_cli_unreadable_image_met_mid_run_saves_and_says_which(tmp_path):
    """The first image is fine (the set-up check reads it), a later one is not: the run saves its step, then
    exits 1 with one line naming the file."""
    folder = write_images(tmp_path / "imgs", n=2)
    (folder / "z_broken.png").write_bytes(b"\x89PNG truncated")
    proc = _run(_cli("deqir", tmp_path, "--workdir=run", "--config.data.source=folder",
                     f"--config.data.folder={folder}", "--config.train.total_steps=20"), tmp_path)
    _assert_one_error_line(proc, "cannot read training image")
    assert "z_broken.png" in proc.stderr and "is saved in run: rerun to resume" in proc.stderr
    step = int(proc.stderr.split("(step ")[1].split()[0])
    assert _finished_steps(tmp_path / "run") == [str(step)]
