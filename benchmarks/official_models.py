r"""The official PyTorch networks for ``benchmarks/speed.py --official PATH``: timed on the same weights as ours.

Supported entries: ``adm256`` and ``adm_small`` (guided-diffusion's ``UNetModel`` from
``guided_diffusion.script_util.create_model`` of a checkout of openai/guided-diffusion at PATH). The ResShift
networks (``swin``, ``vq_*``) and the samplers are not wired up here; they are recorded as unsupported.

How a comparison runs (:func:`compare`), per entry and batch, in float32:

1. A worker subprocess (this file, ``worker`` sub-command; numpy + torch only, the official code on its path)
   is started with the glibc allocator settings ``MALLOC_MMAP_THRESHOLD_=4G MALLOC_TRIM_THRESHOLD_=4G
   MALLOC_TOP_PAD_=1G`` (they act only when set before the process starts). It builds the official module,
   gives it random weights (N(0, 1/fan_in) kernels, norm scales 1 + N(0, 0.01), biases N(0, 0.01): every layer
   active, so the output is not the zero of the zero-initialised output conv), writes its state dict, an input
   and its output to a temporary folder and waits for commands on stdin.
2. This process converts the state dict with ``deqir_jax.convert_keys.convert_adm_state_dict`` (the project's
   converter), runs our UNet on the same input and records the agreement (max |ours - official| and that over
   max |official|).
3. ``--pairs`` interleaved pairs: wait until the 1-minute load average is below ``--quiet-load`` (at most
   ``--quiet-timeout`` s, else a warning in the JSON), time ours (median of ``--repeats`` calls), then ask the
   worker for the same. The ratio ours / official is the median over pairs of the per-pair ratios.

Nothing of the official code is copied or committed: it is imported from PATH by the worker only.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

SUPPORTED = ("adm256", "adm_small")
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296",
              "MALLOC_TOP_PAD_": "1073741824"}
AGREE_REL = 1e-3  # max |ours - official| / max |official| below this counts as agreement (float32)


def create_model_kwargs(model_cfg: Any) -> dict:
    """guided-diffusion ``create_model`` keyword arguments of one of our ADM ``model`` sections (float32)."""
    keys = ("image_size", "num_channels", "num_res_blocks", "channel_mult", "learn_sigma", "class_cond",
            "attention_resolutions", "num_heads", "num_head_channels", "num_heads_upsample",
            "use_scale_shift_norm", "dropout", "resblock_updown", "use_new_attention_order")
    kwargs = {k: model_cfg[k] for k in keys}
    kwargs["image_size"] = int(kwargs["image_size"])
    kwargs["use_fp16"] = False
    return kwargs


# ----------------------------------------------------------------------------------------------- worker side
def worker(argv: list[str]) -> None:
    import argparse

    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--official", required=True)
    parser.add_argument("--kwargs", required=True, help="create_model kwargs (JSON)")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sys.path.insert(0, args.official)
    from guided_diffusion.script_util import create_model  # the official code, from PATH

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = create_model(**json.loads(args.kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
    model = model.to(device)
    work = pathlib.Path(args.workdir)
    np.savez(work / "state.npz", **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
    rng = np.random.default_rng(args.seed)
    x = torch.from_numpy(rng.standard_normal((args.batch, 3, args.size, args.size), np.float32)).to(device)
    t = torch.full((args.batch,), 500, dtype=torch.long, device=device)

    def call():
        with torch.inference_mode():
            out = model(x, t)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    out = call()
    np.savez(work / "io.npz", x=x.cpu().numpy(), out=out.cpu().numpy())
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        repeats, warmup = int(cmd[1]), int(cmd[2])
        for _ in range(warmup):
            call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        print(json.dumps({"times_s": times}), flush=True)


# ----------------------------------------------------------------------------------------------- our side
def wait_quiet(threshold: float, timeout: float) -> dict:
    """Sleeps until the 1-minute load average is below ``threshold`` or ``timeout`` s have passed."""
    start = time.perf_counter()
    while os.getloadavg()[0] >= threshold and time.perf_counter() - start < timeout:
        time.sleep(1.0)
    load = os.getloadavg()[0]
    out = {"waited_s": time.perf_counter() - start, "loadavg": load, "quiet": load < threshold}
    if not out["quiet"]:
        out["warning"] = f"load average {load:.2f} still >= {threshold:g} after {timeout:g} s; timed anyway"
    return out


def _read_json_line(proc: subprocess.Popen) -> dict:
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"official worker exited (code {proc.poll()}); see its stderr above")
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)


def compare_one(name: str, batch: int, args: Any, sizes: Any, adm_config: Callable, timed_calls: Callable) -> dict:
    import jax

    from deqir_jax import convert_keys, models

    model_cfg = adm_config(name, sizes, "float32")
    size = int(model_cfg.image_size) if name == "adm256" else sizes.small_size
    threshold = args.quiet_load if args.quiet_load is not None else max((os.cpu_count() or 2) / 2, 1.0)
    row: dict = {"name": name, "batch": batch, "dtype": "float32", "official_device": args.official_device,
                 "quiet_load": threshold, "malloc_env": MALLOC_ENV}
    with tempfile.TemporaryDirectory(prefix="speed-official-") as work:
        env = {**os.environ, **MALLOC_ENV}
        env["PYTHONPATH"] = os.pathsep.join([str(args.official), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "worker", "--official", str(args.official),
               "--kwargs", json.dumps(create_model_kwargs(model_cfg)), "--batch", str(batch), "--size",
               str(size), "--device", args.official_device, "--workdir", work]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            ready = _read_json_line(proc)
            row.update(torch_version=ready["torch"], torch_threads=ready["threads"])
            with np.load(os.path.join(work, "state.npz")) as f:
                state = {k: f[k] for k in f.files}
            with np.load(os.path.join(work, "io.npz")) as f:
                x_nchw, ref = f["x"], f["out"]
            params = jax.device_put(convert_keys.convert_adm_state_dict(state, model_cfg))
            model = models.model_from_config(model_cfg)
            x = jax.device_put(np.transpose(x_nchw, (0, 2, 3, 1)))
            t = jax.device_put(np.full((batch,), 500, np.int32))
            fn = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
            compiled = fn.lower(params, x, t).compile()  # full optimisation (never speed.py's --fast-compile)
            ours = np.transpose(np.asarray(compiled(params, x, t)), (0, 3, 1, 2))
            diff = float(np.abs(ours - ref).max())
            scale = float(np.abs(ref).max())
            row.update(max_abs_diff=diff, max_abs_official=scale, rel_diff=diff / max(scale, 1e-12),
                       agree=diff / max(scale, 1e-12) < AGREE_REL)
            pairs = []
            for i in range(args.pairs):
                quiet = wait_quiet(threshold, args.quiet_timeout)
                warm = args.warmup if i == 0 else 1
                ours_t = timed_calls(compiled, (params, x, t), warm, args.repeats)
                proc.stdin.write(f"time {args.repeats} {warm}\n")
                proc.stdin.flush()
                off_t = _read_json_line(proc)["times_s"]
                pair = {**quiet, "ours_s": statistics.median(ours_t), "official_s": statistics.median(off_t),
                        "ours_times_s": ours_t, "official_times_s": off_t}
                pair["ratio"] = pair["ours_s"] / pair["official_s"]
                pairs.append(pair)
            row["pairs"] = pairs
            row["ours_s"] = statistics.median(p["ours_s"] for p in pairs)
            row["official_s"] = statistics.median(p["official_s"] for p in pairs)
            row["ratio_ours_over_official"] = statistics.median(p["ratio"] for p in pairs)
            warnings = [p["warning"] for p in pairs if "warning" in p]
            if warnings:
                row["warnings"] = warnings
        finally:
            if proc.poll() is None:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return row


def compare(args: Any, sizes: Any, adm_config: Callable, timed_calls: Callable) -> list:
    """One row per selected entry and batch: agreement, interleaved timings and the ratio ours / official."""
    rows = []
    print(f"\nofficial comparison ({args.official}), float32, {args.pairs} interleaved pairs, "
          f"{args.repeats} calls each")
    print(f"{'entry':<12} {'B':>3} {'max|d|/max|ref|':>15} {'ours ms':>9} {'official ms':>11} {'ours/official':>13} "
          f"{'quiet':>5}")
    for name in args.entries:
        for batch in args.batches:
            if name not in SUPPORTED:
                rows.append({"name": name, "batch": batch, "skipped": "no official module wired up "
                             f"(supported: {', '.join(SUPPORTED)})"})
                print(f"{name:<12} {batch:>3} skipped: {rows[-1]['skipped']}", flush=True)
                continue
            try:
                row = compare_one(name, batch, args, sizes, adm_config, timed_calls)
                print(f"{name:<12} {batch:>3} {row['rel_diff']:>15.2e} {row['ours_s'] * 1e3:>9.2f} "
                      f"{row['official_s'] * 1e3:>11.2f} {row['ratio_ours_over_official']:>13.3f} "
                      f"{'no' if row.get('warnings') else 'yes':>5}", flush=True)
            except Exception as err:  # noqa: BLE001 - recorded, the other entries still run
                row = {"name": name, "batch": batch, "error": f"{type(err).__name__}: {err}"}
                print(f"{name:<12} {batch:>3} error: {row['error']}", flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2:])
    else:
        raise SystemExit("used by benchmarks/speed.py --official (the 'worker' sub-command runs the official side)")
