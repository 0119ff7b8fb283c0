"""The convert CLI family (``python -m deqir_jax.convert`` / ``resshift_jax.convert``): bad input -> one line.

Table-driven: every :class:`Case` runs the CLI in a fresh working folder (``tmp_path``) with inputs from a shared
folder, and checks the exit code, that stderr is exactly one line holding the expected fragment (or, for a
success, that stdout is our one summary line and stderr is empty), and that nothing outside the run's own
``--out`` changed (file list, sizes and mtimes of both folders; a refused run must not touch ``--out`` either).
Each subprocess imports jax (seconds), so the table is ``slow`` except two representative cases; the library
functions behind it (source checks, checkpoint recognition) are tested quickly below, and the ownership rules
in ``tests/test_checkpoints.py``.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
from typing import Callable, Optional

import ml_collections
import numpy as np
import pytest
import torch

from ircore import checkpoint_kinds, checkpoints, convert_cli, convert_source
from ircore.torch_convert import ConversionError

DDPM_PARAMS = 1_113_955  # deqir/tiny_ddpm fixture, as its sidecar says (checked in test_deqir_convert)


def _fixture_state(load_fixture, name: str, prefix: str) -> dict[str, np.ndarray]:
    fx = load_fixture(name)
    return {k[len(prefix):]: np.array(fx[k]) for k in fx.files if k.startswith(prefix)}


def _torch_save(state: dict[str, np.ndarray], path: pathlib.Path) -> None:
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)


def _config_file(path: pathlib.Path, config: dict) -> None:
    path.write_text("import ml_collections\n"
                    f"def get_config():\n    return ml_collections.ConfigDict({config!r})\n")


@pytest.fixture(scope="module")
def inputs(load_fixture, tmp_path_factory) -> pathlib.Path:
    """Tiny checkpoints of every kind and the two packages' tiny configs, in one folder shared by the cases."""
    root = tmp_path_factory.mktemp("convert_inputs")
    ddpm = load_fixture("deqir/tiny_ddpm").meta["config"]
    _config_file(root / "deqir_cfg.py", {"model": dict(ddpm["model"], arch="ddpm", dtype="float32",
                                                      image_size=ddpm["data"]["image_size"])})
    unet_meta, vq_meta = load_fixture("resshift/unet_tiny_realsr").meta, load_fixture("resshift/vq_tiny_f4").meta
    _config_file(root / "rs_cfg.py", {"name": "tiny_realsr", "model": unet_meta["constructor_kwargs"],
                                      "autoencoder": {"kind": "vq_f4", "dtype": "float32",
                                                      "params": vq_meta["constructor_kwargs"]}})
    states = {"ddpm.ckpt": _fixture_state(load_fixture, "deqir/tiny_ddpm", "param/"),
              "gd.pt": _fixture_state(load_fixture, "deqir/tiny_unet", "param/"),
              "unet.pth": _fixture_state(load_fixture, "resshift/unet_tiny_realsr", "sd/"),
              "vq.pth": _fixture_state(load_fixture, "resshift/vq_tiny_f4", "sd/")}
    for name, state in states.items():
        _torch_save(state, root / name)
    nan_ddpm = dict(states["ddpm.ckpt"], **{"conv_in.weight": np.full_like(states["ddpm.ckpt"]["conv_in.weight"],
                                                                           np.nan)})
    _torch_save(nan_ddpm, root / "nan.ckpt")
    nan_vq = dict(states["vq.pth"], **{"quant_conv.weight": np.full_like(states["vq.pth"]["quant_conv.weight"],
                                                                         np.inf)})
    _torch_save(nan_vq, root / "nan_vq.pth")
    np.savez(root / "unrelated.npz", **{"fc.weight": np.ones((2, 2), np.float32)})
    (root / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "trunc.pth").write_bytes((root / "vq.pth").read_bytes()[:5000])
    (root / "empty.pt").write_bytes(b"")
    (root / "weights.safetensors").write_bytes(b"not read")
    torch.save([torch.ones(2)], root / "list.pt")
    torch.save({"epoch": 3, "name": "run"}, root / "no_tensors.pt")
    (root / "a_folder.pt").mkdir()
    return root


def _snapshot(*roots: pathlib.Path, exclude: Optional[pathlib.Path] = None) -> dict:
    """``{path: (kind, size, mtime_ns)}`` of everything under ``roots`` except ``exclude`` and what it holds."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if exclude is not None and (path == exclude or exclude in path.parents):
                continue
            stat = path.lstat()
            found[str(path)] = ("dir" if path.is_dir() else "file", stat.st_size if path.is_file() else 0,
                                stat.st_mtime_ns)
    return found


def _read_only_parent(tmp: pathlib.Path) -> str:
    """An --out whose parent cannot be written: a read-only file system for root (who may write anywhere
    else), a chmod 555 folder for anyone else."""
    if os.geteuid() == 0:
        return "/proc/sys/ircore_convert_test/out"
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o555)
    return str(tmp / "ro" / "out")


def _earlier_output(tmp: pathlib.Path, _inputs: pathlib.Path) -> None:
    checkpoints.save_params(tmp / "out", {"old": np.ones(3, np.float32)}, {"source": "earlier"})


def _foreign_output(tmp: pathlib.Path, _inputs: pathlib.Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")


def _src_inside_out(tmp: pathlib.Path, inputs: pathlib.Path) -> None:
    shutil.copy(inputs / "ddpm.ckpt", tmp / "ddpm.ckpt")


def _out_is_a_file(tmp: pathlib.Path, _inputs: pathlib.Path) -> None:
    (tmp / "out").write_text("a file")


@dataclasses.dataclass(frozen=True)
class Case:
    """One CLI run: ``argv`` with ``{in}`` (the inputs folder) and ``{ro}`` (a read-only parent) filled in, run
    in a fresh folder holding ``out`` after ``setup``; ``message``: the stderr fragment, or for ``rc == 0`` the
    stdout fragment."""

    id: str
    package: str
    argv: tuple[str, ...]
    message: str
    rc: int = 1
    setup: Optional[Callable[[pathlib.Path, pathlib.Path], None]] = None
    quick: bool = False


D, R = "deqir_jax", "resshift_jax"
DCFG, RCFG = "--config={in}/deqir_cfg.py", "--config={in}/rs_cfg.py"
NOT_WRITTEN = "holds files this program did not write (notes.txt); choose another --out or remove them yourself"
DAMAGED = "damaged, truncated or not a .pt, .pth, .ckpt (torch.save) or .npz (numpy.savez) file"
CASES = [
    # --out
    Case("deqir-overwrite-foreign", D, ("--src={in}/ddpm.ckpt", DCFG, "--out=out", "--overwrite"), NOT_WRITTEN,
         setup=_foreign_output),
    Case("resshift-overwrite-foreign", R, ("--src={in}/vq.pth", RCFG, "--out=out", "--overwrite"), NOT_WRITTEN,
         setup=_foreign_output),
    Case("resshift-foreign-no-overwrite", R, ("--src={in}/vq.pth", RCFG, "--out=out"), NOT_WRITTEN,
         setup=_foreign_output),
    Case("deqir-own-no-overwrite", D, ("--src={in}/ddpm.ckpt", DCFG, "--out=out"),
         "already exists; pass --overwrite (overwrite=True from Python) to replace it", setup=_earlier_output),
    Case("deqir-overwrite-own", D, ("--src={in}/ddpm.ckpt", DCFG, "--out=out", "--overwrite"),
         f"wrote {DDPM_PARAMS:,} parameters to out", rc=0, setup=_earlier_output),
    Case("resshift-fresh", R, ("--src={in}/vq.pth", RCFG, "--out=out"), "parameters to out", rc=0),
    Case("deqir-out-is-file", D, ("--src={in}/ddpm.ckpt", DCFG, "--out=out", "--overwrite"),
         "out is an existing file, not a folder; choose another --out", setup=_out_is_a_file, quick=True),
    Case("resshift-out-is-src", R, ("--src={in}/unet.pth", RCFG, "--out={in}/unet.pth"),
         "unet.pth would replace {in}/unet.pth, which it contains; choose another --out"),
    Case("deqir-out-contains-src", D, ("--src=ddpm.ckpt", DCFG, "--out=.", "--overwrite"),
         "would replace ddpm.ckpt, which it contains; choose another --out", setup=_src_inside_out),
    Case("deqir-read-only-parent", D, ("--src={in}/ddpm.ckpt", DCFG, "--out={ro}"),
         "is read-only or not writable; choose another --out"),
    Case("resshift-read-only-parent", R, ("--src={in}/unet.pth", RCFG, "--out={ro}"),
         "is read-only or not writable; choose another --out"),
    # --src
    Case("deqir-missing-src", D, ("--src=missing.pt", DCFG, "--out=out"), "--src missing.pt does not exist"),
    Case("resshift-missing-src", R, ("--src=missing.pth", RCFG, "--out=out"), "--src missing.pth does not exist"),
    Case("deqir-garbage-src", D, ("--src={in}/garbage.pt", DCFG, "--out=out"), DAMAGED),
    Case("resshift-garbage-src", R, ("--src={in}/garbage.pt", RCFG, "--out=out"), DAMAGED),
    Case("resshift-truncated-src", R, ("--src={in}/trunc.pth", RCFG, "--out=out"), DAMAGED),
    Case("deqir-empty-src", D, ("--src={in}/empty.pt", DCFG, "--out=out"), "empty.pt is empty (0 bytes)"),
    Case("deqir-folder-src", D, ("--src={in}/a_folder.pt", DCFG, "--out=out"),
         "a_folder.pt is a folder; pass the checkpoint file itself"),
    Case("resshift-unknown-suffix", R, ("--src={in}/weights.safetensors", RCFG, "--out=out"),
         "has an unknown suffix '.safetensors'; it must be a .pt, .pth, .ckpt (torch.save) or .npz"),
    Case("deqir-list-src", D, ("--src={in}/list.pt", DCFG, "--out=out"), "holds a list, not a dict of tensors"),
    Case("resshift-no-tensors", R, ("--src={in}/no_tensors.pt", RCFG, "--out=out"),
         "no_tensors.pt holds no tensors"),
    # the other package's weights or config
    Case("deqir-given-resshift-unet", D, ("--src={in}/unet.pth", DCFG, "--out=out"),
         "unet.pth looks like a ResShift UNet checkpoint, not a DeqIR prior (guided-diffusion UNet or DDPM); "
         "did you mean python -m resshift_jax.convert?"),
    Case("deqir-given-resshift-vq", D, ("--src={in}/vq.pth", DCFG, "--out=out"),
         "vq.pth looks like a ResShift VQ autoencoder checkpoint, not a DeqIR prior"),
    Case("resshift-given-guided-diffusion", R, ("--src={in}/gd.pt", RCFG, "--out=out"),
         "gd.pt looks like a guided-diffusion UNet (a DeqIR prior) checkpoint, not a ResShift UNet or VQ "
         "autoencoder; did you mean python -m deqir_jax.convert?"),
    Case("resshift-given-ddpm", R, ("--src={in}/ddpm.ckpt", RCFG, "--out=out", "--part=unet"),
         "ddpm.ckpt looks like a DDPM UNet (the DeqIR CelebA-HQ prior) checkpoint"),
    Case("deqir-given-resshift-config", D, ("--src={in}/ddpm.ckpt", RCFG, "--out=out"),
         "not a DeqIR model config: pass one of configs/deqir/models/*.py as --config"),
    Case("resshift-wrong-part", R, ("--src={in}/unet.pth", RCFG, "--out=out", "--part=autoencoder"),
         "unet.pth looks like a ResShift UNet checkpoint, but --part autoencoder was given; pass --part unet or "
         "leave --part out"),
    Case("deqir-unrelated-npz", D, ("--src={in}/unrelated.npz", DCFG, "--out=out"),
         "checkpoint does not match the model: 1 unused checkpoint key(s): fc.weight | 182 parameter(s) not in the "
         "checkpoint: conv_in/bias, conv_in/kernel, conv_out/bias, conv_out/kernel, down_0_block_0/conv1/bias, "
         "down_0_block_0/conv1/kernel, down_0_block_0/conv2/bias, down_0_block_0/conv2/kernel, ... (174 more)"),
    Case("deqir-empty-out", D, ("--src={in}/ddpm.ckpt", DCFG, "--out="), "--out is empty; name the output folder"),
    Case("resshift-given-deqir-config", R, ("--src={in}/unet.pth", DCFG, "--out=out"),
         "is a DeqIR model config, not a ResShift one: pass one of configs/resshift/*.py as --config"),
    # --config, damaged weights
    Case("deqir-missing-config", D, ("--src={in}/ddpm.ckpt", "--out=out"), "no --config given"),
    Case("resshift-missing-config", R, ("--src={in}/vq.pth", "--out=out"), "no --config given"),
    Case("deqir-nan-tensor", D, ("--src={in}/nan.ckpt", DCFG, "--out=out"),
         "1 tensor(s) with NaN or infinite values (a damaged or diverged checkpoint): conv_in.weight"),
    Case("resshift-inf-tensor", R, ("--src={in}/nan_vq.pth", RCFG, "--out=out"),
         "1 tensor(s) with NaN or infinite values (a damaged or diverged checkpoint): quant_conv.weight"),
]


def _run_case(case: Case, inputs: pathlib.Path, tmp: pathlib.Path) -> None:
    if case.setup is not None:
        case.setup(tmp, inputs)
    fill = {"{in}": str(inputs), "{ro}": _read_only_parent(tmp) if "{ro}" in "".join(case.argv) else ""}
    argv = []
    for arg in case.argv:
        for key, value in fill.items():
            arg = arg.replace(key, value)
        argv.append(arg)
    message = case.message.replace("{in}", str(inputs))
    out = tmp / "out"
    before = _snapshot(inputs, tmp, exclude=out if case.rc == 0 else None)
    proc = subprocess.run([sys.executable, "-m", f"{case.package}.convert", *argv], cwd=tmp,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == case.rc, proc.stderr[-3000:]
    if case.rc == 0:
        assert proc.stderr == "", proc.stderr[-3000:]  # quiet: no orbax / absl INFO lines
        assert proc.stdout.strip().splitlines() == [proc.stdout.strip()] and message in proc.stdout
        assert _snapshot(inputs, tmp, exclude=out) == before
        assert sorted(p.name for p in tmp.iterdir()) == ["out"]  # no staging leftovers beside it
        assert checkpoints.foreign_entries(out) == [] and (out / checkpoints.MANIFEST).is_file()
        assert checkpoints.restore_metadata(out)["source"].endswith(argv[0].split("/")[-1])
        assert "old" not in checkpoints.restore_params(out)  # an earlier output was replaced, not merged
    else:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr[-3000:]
        assert lines[0].startswith(f"{case.package}.convert: error: ") and message in lines[0], lines[0]
        assert _snapshot(inputs, tmp) == before  # a refused run changes nothing, not even --out


@pytest.mark.parametrize("case", [c if c.quick else pytest.param(c, marks=pytest.mark.slow) for c in CASES],
                         ids=[c.id for c in CASES])
def test_convert_cli_case(case, inputs, tmp_path):
    _run_case(case, inputs, tmp_path)


# ----------------------------------------------------------------------------------------------- library, quick
def test_guess_kind_tells_the_families_apart(load_fixture):
    gd = _fixture_state(load_fixture, "deqir/tiny_unet", "param/")
    assert checkpoint_kinds.guess_kind(gd) == checkpoint_kinds.GUIDED_DIFFUSION
    assert checkpoint_kinds.guess_kind(_fixture_state(load_fixture, "deqir/tiny_ddpm", "param/")) \
        == checkpoint_kinds.DDPM
    for name, kind in (("resshift/unet_tiny_realsr", checkpoint_kinds.RESSHIFT_UNET),
                       ("resshift/unet_tiny_inpaint", checkpoint_kinds.RESSHIFT_UNET),
                       ("resshift/vq_tiny_f4", checkpoint_kinds.RESSHIFT_VQ)):
        state = _fixture_state(load_fixture, name, "sd/")
        assert checkpoint_kinds.guess_kind({"module." + k: v for k, v in state.items()}) == kind
    assert checkpoint_kinds.guess_kind({"fc.weight": np.zeros((2, 2))}) is None
    assert checkpoint_kinds.wrong_package("x.pt", gd, "deqir_jax", "a DeqIR prior") is None
    assert checkpoint_kinds.wrong_package("x.pt", gd, "resshift_jax", "a ResShift UNet") == (
        "x.pt looks like a guided-diffusion UNet (a DeqIR prior) checkpoint, not a ResShift UNet; "
        "did you mean python -m deqir_jax.convert?")


def test_shorten_cuts_long_name_lists():
    message = "checkpoint does not match the model: 3 unused key(s): a, b, c | 12 missing: " + ", ".join(
        f"p{i}" for i in range(12)) + " | 9 shape mismatch(es): " + "; ".join(f"k{i} (1,) -> x" for i in range(9))
    assert convert_cli.shorten(message, keep=4) == (
        "checkpoint does not match the model: 3 unused key(s): a, b, c | 12 missing: p0, p1, p2, p3, ... (8 more)"
        " | 9 shape mismatch(es): k0 (1,) -> x; k1 (1,) -> x; k2 (1,) -> x; k3 (1,) -> x; ... (5 more)")
    assert convert_cli.shorten("one\nline  only") == "one line only"


def test_read_state_dict_refusals(tmp_path):
    cases = {
        "missing.pt": (None, FileNotFoundError, "--src .*missing.pt does not exist"),
        "folder.pt": ("dir", ValueError, "is a folder"),
        "weights.bin": (b"x", ValueError, "unknown suffix '.bin'"),
        "empty.pth": (b"", ValueError, r"is empty \(0 bytes\)"),
        "garbage.pt": (b"\x80\x02garbage" * 50, ConversionError, "damaged, truncated or not"),
        "garbage.npz": (b"PK\x03\x04" + b"\x00" * 40, ConversionError, "damaged, truncated or not"),
    }
    for name, (content, error, match) in cases.items():
        path = tmp_path / name
        if content == "dir":
            path.mkdir()
        elif content is not None:
            path.write_bytes(content)
        with pytest.raises(error, match=match):
            convert_source.read_state_dict(path)
    np.savez(tmp_path / "ok.npz", w=np.ones(2, np.float32))
    assert list(convert_source.read_state_dict(tmp_path / "ok.npz")) == ["w"]


def test_converters_check_out_before_reading_src(tmp_path, monkeypatch):
    """A refused --out never reads the (possibly huge) source: the check comes first."""
    from deqir_jax import convert as deqir_convert  # noqa: PLC0415
    from resshift_jax import convert as resshift_convert  # noqa: PLC0415

    src = tmp_path / "w.pt"
    torch.save({"a": torch.ones(1)}, src)
    (tmp_path / "out").write_text("a file")
    monkeypatch.setattr(convert_source, "load_torch_state_dict", lambda *_: pytest.fail("src was read"))
    deqir_cfg = ml_collections.ConfigDict({"model": {"arch": "ddpm"}})
    with pytest.raises(FileExistsError, match="is an existing file"):
        deqir_convert.convert_checkpoint(src, deqir_cfg, tmp_path / "out", overwrite=True)
    with pytest.raises(FileExistsError, match="is an existing file"):
        resshift_convert.convert_checkpoint(src, ml_collections.ConfigDict({"model": {}}), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "w.pt"]
