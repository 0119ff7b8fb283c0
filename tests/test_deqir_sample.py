"""The ``deqir_jax.sample`` CLI (``restore_images``) on a tiny prior and a real photo."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from skimage import data as skdata
from PIL import Image

from deqir_fixture_utils import load_tiny_unet
from deqir_jax import sample
from deqir_jax.models import adm
from ircore import checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_prior(load_fixture, tmp_path_factory):
    """The tiny guided-diffusion UNet of the fixtures as an orbax checkpoint + its model config."""
    fx = load_fixture("deqir/tiny_unet")
    model_cfg = adm.config_from_create_model_kwargs(fx.meta["constructor_kwargs"])
    _, params = load_tiny_unet(load_fixture)
    ckpt = tmp_path_factory.mktemp("prior") / "tiny_unet"
    checkpoints.save_params(ckpt, params)
    return model_cfg, ckpt, int(fx.meta["constructor_kwargs"]["image_size"])


def _photo(tmp_path, size) -> pathlib.Path:
    path = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).resize((size * 2, size * 2), Image.BICUBIC).save(path)
    return path


def _config(tiny_prior, photo, out, **over) -> ml_collections.ConfigDict:
    from ircore.config_utils import load_config_file

    model_cfg, ckpt, size = tiny_prior
    cfg = load_config_file(REPO / "configs/deqir/sr_x2.py")
    cfg.model = ml_collections.ConfigDict(dict(model_cfg))
    cfg.checkpoint, cfg.image_size, cfg.input, cfg.output = str(ckpt), size, str(photo), str(out)
    cfg.timesteps = 10
    for key, value in over.items():
        target = cfg
        *path, leaf = key.split(".")
        for p in path:
            target = target[p]
        target[leaf] = value
    return cfg


def test_sample_writes_every_output(tiny_prior, tmp_path):
    photo = _photo(tmp_path, tiny_prior[2])
    cfg = _config(tiny_prior, photo, tmp_path / "out", **{"solver.max_iter": 12})
    (record,) = sample.restore_images(cfg, progress=False)
    folder = tmp_path / "out" / "astronaut"
    for name in ("restored.png", "measurement.png", "reference.png", "metrics.json", "convergence.png"):
        assert (folder / name).is_file(), name
    size = tiny_prior[2]
    assert Image.open(folder / "restored.png").size == (size, size)
    assert Image.open(folder / "measurement.png").size == (size // 2, size // 2)
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert 1 <= record["map_evaluations"] <= 12
    assert record["nfe"] == record["map_evaluations"] * 10
    assert len(record["residual_history"]) == record["map_evaluations"]
    assert np.isfinite(record["psnr"]) and 0.0 < record["ssim"] <= 1.0
    assert record["lpips"] is not None and record["baseline"]["name"] == "A+y"  # A^+ y scored as the baseline
    assert np.isfinite(record["baseline"]["psnr"]) and record["baseline"]["lpips"] is not None
    # Range-space consistency: the DDNM rectification makes A x0 = y up to float error.
    assert record["consistency_l2"] < 1e-2
    with pytest.raises(FileExistsError, match="overwrite"):
        sample.restore_images(cfg, progress=False)


def test_sample_sequential_and_parallel_agree(tiny_prior, tmp_path):
    """With Picard and T evaluations the parallel solver returns exactly the sequential chain."""
    photo = _photo(tmp_path, tiny_prior[2])
    seq = sample.restore_images(_config(tiny_prior, photo, tmp_path / "s", sampler="sequential"), progress=False)[0]
    par = sample.restore_images(_config(tiny_prior, photo, tmp_path / "p", **{
        "solver.method": "picard", "solver.tol": 0.0, "solver.max_iter": 10, "solver.stop": "residual",
        "solver.row_tol": 0.0}), progress=False)[0]
    a = np.asarray(Image.open(tmp_path / "s/astronaut/restored.png"), np.int32)
    b = np.asarray(Image.open(tmp_path / "p/astronaut/restored.png"), np.int32)
    assert np.abs(a - b).max() <= 1
    assert abs(seq["psnr"] - par["psnr"]) < 0.05
    assert seq["nfe"] == 10 and par["nfe"] == 100


@pytest.mark.slow
def test_sample_with_init_opt_records_the_optimisation(tiny_prior, tmp_path):
    """x_T optimisation (official phantom gradient, measurement loss) runs before the solve; the best
    loss is the minimum of the recorded losses."""
    photo = _photo(tmp_path, tiny_prior[2])
    cfg = _config(tiny_prior, photo, tmp_path / "io", **{
        "init_opt.steps": 3, "init_opt.gradient": "phantom", "init_opt.loss": "measurement",
        "init_opt.learning_rate": 1e-2, "init_opt.early_stop": 0.0})
    (record,) = sample.restore_images(cfg, progress=False)
    opt = record["init_opt"]
    assert opt["epochs"] == 3 and len(opt["losses"]) == 3
    assert opt["best_loss"] == pytest.approx(min(opt["losses"]))
    assert all(np.isfinite(opt["losses"]))


def test_sample_takes_a_given_low_resolution_measurement(tiny_prior, tmp_path):
    """input_is_measurement: the input file is y itself (an LR image); it is not resized, the result has
    the model's size, and A(x0) reproduces y (range-space consistency); a wrong-size y is refused."""
    size = tiny_prior[2]
    lr = tmp_path / "lr.png"
    Image.fromarray(skdata.astronaut()).resize((size // 2, size // 2), Image.BICUBIC).save(lr)
    cfg = _config(tiny_prior, lr, tmp_path / "m", input_is_measurement=True, sampler="sequential")
    (record,) = sample.restore_images(cfg, progress=False)
    assert "psnr" not in record  # no reference given
    assert Image.open(tmp_path / "m/lr/restored.png").size == (size, size)
    assert record["consistency_l2"] < 1e-2
    wrong = tmp_path / "wrong.png"
    Image.fromarray(skdata.astronaut()).resize((size // 2 + 1, size // 2), Image.BICUBIC).save(wrong)
    with pytest.raises(ValueError, match="expects"):
        sample.restore_images(_config(tiny_prior, wrong, tmp_path / "w", input_is_measurement=True), progress=False)


def test_sample_errors_are_one_line(tiny_prior, tmp_path):
    photo = _photo(tmp_path, tiny_prior[2])
    cfg = _config(tiny_prior, photo, tmp_path / "o")
    cfg.checkpoint = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        sample.restore_images(cfg, progress=False)
    cfg = _config(tiny_prior, tmp_path / "missing.png", tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        sample.restore_images(cfg, progress=False)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        sample.restore_images(_config(tiny_prior, bad, tmp_path / "o"), progress=False)


def test_sample_cli(tiny_prior, tmp_path):
    model_cfg, ckpt, size = tiny_prior
    photo = _photo(tmp_path, size)
    cfg_file = tmp_path / "tiny_sr.py"
    cfg_file.write_text(
        "import ml_collections\nfrom ircore.config_utils import load_config_file\n"
        "def get_config():\n"
        f"    cfg = load_config_file({str(REPO / 'configs/deqir/sr_x4.py')!r})\n"
        f"    cfg.model = ml_collections.ConfigDict({dict(model_cfg)!r})\n"
        f"    cfg.image_size = {size}\n    return cfg\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "deqir_jax.sample", f"--config={cfg_file}", f"--config.checkpoint={ckpt}",
         f"--config.input={photo.parent}", f"--config.output={tmp_path / 'cli'}", "--config.timesteps=10"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "results in" in proc.stdout and "PSNR" in proc.stdout
    assert (tmp_path / "cli/astronaut/restored.png").is_file()
    assert Image.open(tmp_path / "cli/astronaut/measurement.png").size == (size // 4, size // 4)


def test_cli_errors_are_one_line_and_leave_no_run_folder(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "deqir_jax.sample", *args], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)

    for args, message in (
        ([f"--config={REPO / 'configs/deqir/sr_x4.py'}"], "no input given"),
        ([f"--config={REPO / 'configs/deqir/sr_x4.py'}", f"--config.input={tmp_path / 'missing.png'}"],
         "does not exist"),
        ([f"--config={REPO / 'configs/deqir/sr_x4.py'}", f"--config.input={REPO / 'ircore/photo_files/chelsea.png'}"],
         "no prior checkpoint given"),
    ):
        proc = cli(*args)
        assert proc.returncode == 1, proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if line.startswith("deqir_jax.sample: error:")]
        assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()
