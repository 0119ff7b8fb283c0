"""``deqir_jax.convert``: a released-style torch checkpoint -> orbax -> the same outputs as the official code."""
from __future__ import annotations

import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import torch

from ircore.layers import count_params
from deqir_fixture_utils import parse_tol
from deqir_jax import convert, models
from ircore import checkpoints, torch_convert


def _tiny_ddpm_config(fx) -> ml_collections.ConfigDict:
    meta = fx.meta["config"]
    model = dict(meta["model"], arch="ddpm", image_size=meta["data"]["image_size"], dtype="float32")
    return ml_collections.ConfigDict({"model": model})


def _write_ckpt(fx, path, drop=None, rename=None):
    state = {k[len("param/"):]: torch.from_numpy(np.array(fx[k])) for k in fx.files if k.startswith("param/")}
    if drop:
        del state[drop]
    if rename:
        state[rename[1]] = state.pop(rename[0])
    torch.save(state, path)  # like celeba_hq.ckpt: a plain state_dict
    return path


def test_convert_checkpoint_round_trip_matches_official_outputs(load_fixture, tmp_path):
    fx = load_fixture("deqir/tiny_ddpm")
    cfg = _tiny_ddpm_config(fx)
    src = _write_ckpt(fx, tmp_path / "tiny.ckpt")
    out = tmp_path / "converted"
    params = convert.convert_checkpoint(src, cfg, out)
    assert count_params(params) == fx.meta["n_params"]
    restored = checkpoints.restore_params(out)
    model = models.model_from_config(cfg.model)
    x = np.transpose(fx["x"], (0, 2, 3, 1))
    got = jax.jit(model.apply)({"params": restored}, x, fx["timesteps"])
    atol, rtol = (parse_tol(fx.meta["tolerance"], kind) for kind in ("atol", "rtol"))
    np.testing.assert_allclose(np.transpose(np.asarray(got), (0, 3, 1, 2)), fx["out"], atol=atol, rtol=rtol)
    with pytest.raises(FileExistsError):
        convert.convert_checkpoint(src, cfg, out)


def test_convert_names_missing_and_unknown_keys(load_fixture, tmp_path):
    fx = load_fixture("deqir/tiny_ddpm")
    cfg = _tiny_ddpm_config(fx)
    src = _write_ckpt(fx, tmp_path / "bad.ckpt", rename=("mid.attn_1.q.weight", "mid.attn_1.query.weight"))
    with pytest.raises(torch_convert.ConversionError) as err:
        convert.convert_checkpoint(src, cfg)
    assert "mid.attn_1.query.weight" in str(err.value)
    assert "mid_attn_1" in str(err.value) or "mid.attn_1.q" in str(err.value)


def test_convert_cli(load_fixture, tmp_path):
    fx = load_fixture("deqir/tiny_ddpm")
    cfg = _tiny_ddpm_config(fx)
    src = _write_ckpt(fx, tmp_path / "tiny.ckpt")
    cfg_file = tmp_path / "tiny_config.py"
    cfg_file.write_text(
        "import ml_collections\n"
        f"def get_config():\n    return ml_collections.ConfigDict({cfg.to_dict()!r})\n"
    )
    out = tmp_path / "cli_out"
    proc = subprocess.run(
        [sys.executable, "-m", "deqir_jax.convert", f"--src={src}", f"--config={cfg_file}", f"--out={out}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{fx.meta['n_params']:,} parameters" in proc.stdout
    restored = checkpoints.restore_params(out)
    np.testing.assert_array_equal(
        restored["conv_in"]["kernel"], np.transpose(fx["param/conv_in.weight"], (2, 3, 1, 0))
    )
