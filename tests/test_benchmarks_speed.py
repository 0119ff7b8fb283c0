"""benchmarks/speed.py: the roofline projection and flag checks (fast), and a --quick smoke run (slow)."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import official_models, speed  # noqa: E402


def test_projection_is_the_roofline_max():
    # 1 TFLOP and 1 GB in bf16: H100 compute 1e12 / 989e12 s vs memory 1e9 / 3.35e12 s -> memory bound.
    proj = speed.projection(1e12, 1e9, "bfloat16")
    h100 = proj["h100_sxm"]
    assert h100["compute_s"] == pytest.approx(1 / 989)
    assert h100["memory_s"] == pytest.approx(1e9 / 3.35e12)
    assert h100["s"] == max(h100["compute_s"], h100["memory_s"]) and h100["bound"] == "compute"
    # float32 uses the fp32 peak on the H100 (67 TFLOP/s) and the bf16 rate on the TPU v5e (no fp32 figure).
    f32 = speed.projection(1e12, 1e6, "float32")
    assert f32["h100_sxm"]["compute_s"] == pytest.approx(1 / 67)
    assert f32["tpu_v5e"]["compute_s"] == pytest.approx(1 / 197)
    assert speed.projection(1e3, 1e12, "bfloat16")["tpu_v5e"]["bound"] == "memory"
    assert speed.projection(None, 1e9, "float32") == {}


def test_flags_are_checked(tmp_path):
    args = speed.parse_args(["--quick", "--only", "swin,adm256", "--dtypes", "float32,bfloat16"])
    assert args.entries == ["swin", "adm256"] and args.dtypes == ["float32", "bfloat16"]
    assert args.batches == [1] and args.timesteps == 4
    full = speed.parse_args([])
    assert full.entries == list(speed.ENTRIES) and full.batches == [1, 8] and full.timesteps == 25
    with pytest.raises(SystemExit, match="unknown entry"):
        speed.parse_args(["--only", "swin,nope"])
    with pytest.raises(SystemExit, match="unknown dtype"):
        speed.parse_args(["--dtypes", "float64"])
    with pytest.raises(SystemExit, match="is not a folder"):
        speed.parse_args(["--official", str(tmp_path / "missing")])


def test_official_worker_without_the_code_says_so_in_one_line(tmp_path):
    # A folder that is not the official checkout (or no torch): one line naming the problem, no traceback.
    (tmp_path / "inputs.npz").write_bytes(b"")
    proc = subprocess.run([sys.executable, official_models.__file__, "worker", "--official", str(tmp_path),
                           "--kind", "swin", "--kwargs", "{}", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "official swin code" in proc.stderr or "needs PyTorch" in proc.stderr


def test_official_kwargs_and_quiet_wait(monkeypatch):
    # Our ADM section -> guided-diffusion create_model kwargs (float32: use_fp16 off), JSON-able.
    sizes = speed.Sizes(quick=False, timesteps=25)
    kwargs = official_models.create_model_kwargs(speed.adm_config("adm256", sizes, "bfloat16"))
    assert kwargs["image_size"] == 256 and kwargs["num_channels"] == 256 and kwargs["use_fp16"] is False
    assert kwargs["attention_resolutions"] == "32,16,8" and "dtype" not in kwargs
    assert official_models._plain(speed.resshift_config(sizes, "float32").model)["channel_mult"] == [1, 2, 2, 4]
    # The whole ResShift sampler: both networks' and the diffusion's constructor arguments, LQ input, timing only.
    side = official_models.our_side("resshift", 2, sizes, speed, None)
    assert side["kind"] == "resshift" and side["compare_outputs"] is False
    assert set(side["kwargs"]) == {"unet", "vq", "diffusion"} and side["kwargs"]["diffusion"]["sf"] == 4
    lq = side["inputs"]["lq"]
    assert lq.shape == (2, 3, sizes.latent, sizes.latent) and lq.min() >= -1 and lq.max() <= 1
    json.dumps(side["kwargs"])
    # A busy machine: the wait gives up after the timeout and says so; a quiet one does not wait.
    monkeypatch.setattr(official_models.os, "getloadavg", lambda: (50.0, 50.0, 50.0))
    busy = official_models.wait_quiet(1.0, 0.0)
    assert not busy["quiet"] and "warning" in busy
    monkeypatch.setattr(official_models.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    quiet = official_models.wait_quiet(1.0, 10.0)
    assert quiet["quiet"] and quiet["waited_s"] < 1.0 and "warning" not in quiet


@pytest.mark.slow
def test_quick_run_writes_every_entry(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/speed.py"), "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] and result["entries"] == list(speed.ENTRIES)
    rows = {row["name"]: row for row in result["rows"]}
    assert sorted(rows) == sorted(speed.ENTRIES)
    for name, row in rows.items():
        assert "error" not in row and "skipped" not in row, (name, row)
        assert row["batch"] == 1 and row["dtype"] == "float32"
        for key in ("compile_s", "median_s", "min_s", "images_per_s", "flops", "bytes", "xla_flops", "xla_bytes",
                    "peak_bytes"):
            assert row[key] > 0, (name, key, row[key])
        for chip in speed.PEAKS:
            proj = row["projection"][chip]
            assert proj["s"] > 0 and proj["s"] == max(proj["compute_s"], proj["memory_s"]), (name, chip)
    # Looped entries: XLA counts a loop body once, the FLOPs add the other trips of the UNet call.
    for looped, body, trips in (("resshift", "swin", 4), ("deqir_seq_small", "adm_small", 4)):
        assert rows[looped]["flops"] == pytest.approx(
            rows[looped]["xla_flops"] + (trips - 1) * rows[body]["xla_flops"])
    # A parallel round is one call over T = 4 rows: about 4x the single-image UNet call.
    assert rows["deqir_round_small"]["flops"] == pytest.approx(4 * rows["adm_small"]["flops"], rel=0.2)
    assert "projection" in proc.stdout  # the table's columns are labelled as projections


def test_versus_xla_defaults_times_both_compiles(tmp_path):
    # The A/B of the samplers' tuned CPU options: both compiles timed, ratio and output change recorded.
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/speed.py"), "--quick", "--only", "adm_small",
                           "--repeats", "2", "--warmup", "0", "--versus-xla-defaults", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    from ircore.compiling import CPU_SAMPLING_OPTIONS, FAST_COMPILE_OPTIONS

    assert result["compile_options"] == {**CPU_SAMPLING_OPTIONS, **FAST_COMPILE_OPTIONS}
    (row,) = result["versus_xla_defaults"]
    assert row["name"] == "adm_small" and len(row["tuned_times_s"]) == len(row["xla_default_times_s"]) == 2
    assert row["tuned_over_xla_default"] == pytest.approx(row["tuned_s"] / row["xla_default_s"])
    assert 0 <= row["max_abs_output_change"] < 1e-4
    assert "tuned/default" in proc.stdout
