"""``resshift_jax.convert``: fixture weights saved as torch ``.pth`` -> orbax -> the official outputs."""
from __future__ import annotations

import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import torch

from ircore.layers import count_params
from ircore import checkpoints, torch_convert
from resshift_jax import convert, convert_keys
from resshift_jax.models import unet_swin, vq

RTOL = ATOL = 1e-4  # fixture README: networks at rtol / atol 1e-4 (float32)


def nhwc(a):
    return np.moveaxis(np.asarray(a), -3, -1)


def _state(fx) -> dict[str, np.ndarray]:
    return {k[len("sd/"):]: np.asarray(fx[k]) for k in fx.files if k.startswith("sd/")}


def _save_pth(state, path, prefix="", container=None):
    tensors = {prefix + k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    torch.save(tensors if container is None else {container: tensors, "epoch": 3}, path)
    return path


@pytest.fixture(scope="module")
def tiny(load_fixture):
    """(config, unet fixture, vq fixture): a full ResShift config holding the tiny fixture networks."""
    ufx, vfx = load_fixture("resshift/unet_tiny_realsr"), load_fixture("resshift/vq_tiny_f4")
    cfg = ml_collections.ConfigDict({
        "name": "tiny_realsr",
        "model": ufx.meta["constructor_kwargs"],
        "autoencoder": {"kind": "vq_f4", "dtype": "float32", "params": vfx.meta["constructor_kwargs"]},
    })
    return cfg, ufx, vfx


def test_unet_round_trip_matches_official_forward(tiny, tmp_path):
    cfg, ufx, _ = tiny
    src = _save_pth(_state(ufx), tmp_path / "unet.pth", prefix="module.")  # DataParallel-style names
    out = tmp_path / "unet"
    params = convert.convert_checkpoint(src, cfg, out)  # part recognised from the keys
    assert count_params(params) == ufx.meta["n_params"]
    meta = checkpoints.restore_metadata(out)
    assert meta["part"] == "unet" and meta["config_name"] == "tiny_realsr"
    assert meta["unet"]["model_channels"] == ufx.meta["constructor_kwargs"]["model_channels"]
    restored = checkpoints.restore_params(out)
    model = unet_swin.model_from_config(cfg)
    got = jax.jit(lambda p, x, t, lq: model.apply({"params": p}, x, t, lq=lq))(
        restored, nhwc(ufx["in/x"]), ufx["in/t"], nhwc(ufx["in/lq"]))
    err = float(np.max(np.abs(np.asarray(got) - nhwc(ufx["out/y"]))))
    print(f"unet forward after orbax round trip: max abs err {err:.3g}")
    np.testing.assert_allclose(np.asarray(got), nhwc(ufx["out/y"]), rtol=RTOL, atol=ATOL)


def test_autoencoder_round_trip_matches_official_codes_and_decode(tiny, tmp_path):
    cfg, _, vfx = tiny
    src = _save_pth(_state(vfx), tmp_path / "vq.pth", container="state_dict")  # wrapped like Lightning
    out = tmp_path / "vq"
    convert.convert_checkpoint(src, cfg, out, part="autoencoder")
    assert checkpoints.restore_metadata(out)["part"] == "autoencoder"
    restored = checkpoints.restore_params(out)
    model = vq.model_from_config(cfg.autoencoder)
    x = nhwc(vfx["in/x"])
    z = jax.jit(lambda p, x: model.apply({"params": p}, x, method=vq.VQModel.encode))(restored, x)
    np.testing.assert_allclose(np.asarray(z), nhwc(vfx["out/encode"]), rtol=RTOL, atol=ATOL)
    _, idx = jax.jit(lambda p, z: model.apply({"params": p}, z, method=vq.VQModel.quantize))(
        restored, nhwc(vfx["out/encode"]))
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(vfx["out/quant_indices"]))
    dec = jax.jit(lambda p, z: model.apply({"params": p}, z, method=vq.VQModel.decode))(
        restored, nhwc(vfx["out/encode"]))
    err = float(np.max(np.abs(np.asarray(dec) - nhwc(vfx["out/decode"]))))
    print(f"vq decode after orbax round trip: max abs err {err:.3g}")
    np.testing.assert_allclose(np.asarray(dec), nhwc(vfx["out/decode"]), rtol=RTOL, atol=ATOL)


def test_detect_part_and_refusals(tiny, tmp_path):
    cfg, ufx, vfx = tiny
    assert convert.detect_part(_state(ufx)) == "unet"
    assert convert.detect_part({"_orig_mod." + k: v for k, v in _state(vfx).items()}) == "autoencoder"
    with pytest.raises(ValueError, match="pass --part"):
        convert.detect_part({"foo.weight": np.zeros(1)})
    with pytest.raises(ValueError, match="part must be"):
        convert.convert_checkpoint(_save_pth(_state(vfx), tmp_path / "v.pth"), cfg, part="vae")
    # The wrong network for the requested part: recognised, and the right --part named.
    src = _save_pth(_state(vfx), tmp_path / "vq.pth")
    with pytest.raises(torch_convert.ConversionError, match="vq.pth looks like a ResShift VQ autoencoder checkpoint, "
                                                            "but --part unet was given; pass --part autoencoder"):
        convert.convert_checkpoint(src, cfg, part="unet")
    # Unrecognised keys keep the strict mapper's message naming them.
    odd = _save_pth({"encoder." + k: v for k, v in _state(ufx).items()}, tmp_path / "odd.pth")
    with pytest.raises(torch_convert.ConversionError, match="encoder.input_blocks.0.0.weight"):
        convert.convert_checkpoint(odd, cfg, part="unet")
    # Existing output is refused, overwrite replaces it.
    out = tmp_path / "vq_out"
    convert.convert_checkpoint(src, cfg, out)
    with pytest.raises(FileExistsError):
        convert.convert_checkpoint(src, cfg, out)
    convert.convert_checkpoint(src, cfg, out, overwrite=True)
    assert checkpoints.restore_metadata(out)["part"] == "autoencoder"


def test_strict_conversion_names_missing_and_unknown_keys(tiny, tmp_path):
    cfg, ufx, _ = tiny
    state = _state(ufx)
    state["out.2.weight_renamed"] = state.pop("out.2.weight")
    with pytest.raises(torch_convert.ConversionError) as err:
        convert.convert_checkpoint(_save_pth(state, tmp_path / "bad.pth"), cfg, part="unet")
    assert "out.2.weight_renamed" in str(err.value) and "out_2" in str(err.value)
    state = _state(ufx)
    buffer_key = sorted(convert_keys.unet_expected_buffers(cfg.model), key=lambda k: (not k.endswith("attn_mask"), k))[0]
    state[buffer_key] = state[buffer_key] + 1  # a stored Swin buffer that the model would not recompute
    with pytest.raises(torch_convert.ConversionError, match="buffer"):
        convert.convert_checkpoint(_save_pth(state, tmp_path / "bad_buffer.pth"), cfg, part="unet")


def test_convert_cli_both_parts(tiny, tmp_path):
    cfg, ufx, vfx = tiny
    cfg_file = tmp_path / "tiny_config.py"
    cfg_file.write_text("import ml_collections\n"
                        f"def get_config():\n    return ml_collections.ConfigDict({cfg.to_dict()!r})\n")
    runs = {"unet": (_save_pth(_state(ufx), tmp_path / "u.pth"), ufx.meta["n_params"]),
            "autoencoder": (_save_pth(_state(vfx), tmp_path / "v.pth"), None)}
    for part, (src, n_params) in runs.items():
        out = tmp_path / f"ckpt_{part}"
        proc = subprocess.run(
            [sys.executable, "-m", "resshift_jax.convert", f"--src={src}", f"--config={cfg_file}",
             f"--out={out}", f"--part={part}"],
            capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert checkpoints.restore_metadata(out)["part"] == part
        if n_params is not None:
            assert f"{n_params:,} parameters" in proc.stdout
    first = checkpoints.restore_params(tmp_path / "ckpt_unet")
    np.testing.assert_array_equal(np.asarray(first["input_blocks_0_0"]["kernel"]),
                                  np.transpose(ufx["sd/input_blocks.0.0.weight"], (2, 3, 1, 0)))
    # A refused conversion is one line on stderr with exit status 1.
    proc = subprocess.run(
        [sys.executable, "-m", "resshift_jax.convert", f"--src={runs['unet'][0]}", f"--config={cfg_file}",
         f"--out={tmp_path / 'ckpt_unet'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("resshift_jax.convert: error:")
    assert "already exists" in proc.stderr
