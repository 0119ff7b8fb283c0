r"""Speed of one ResShift train step: step time, steps/s, images/s and model FLOPs utilisation (MFU).

    python benchmarks/train_step.py [--config configs/resshift/realsr_x4_v3.py] [--batch 8] [--steps 10]
        [--dtype bfloat16] [--lpips_weight 1.0] [--mesh 8,1] [--crop 256] [--peak_tflops 989] [--out result.json]

The step is the real one of ``python -m resshift_jax.train`` (LQ synthesis, frozen VQ encode/decode, Swin-UNet
forward/backward, LPIPS-VGG, AdamW, EMA) on the released UNet size, with random frozen VQ / LPIPS weights and
random HQ crops (speed does not depend on the values). FLOPs are XLA's count for the compiled step
(``cost_analysis``; for a sharded step, the per-device program times the device count). MFU = FLOPs per second
/ (peak FLOP/s of all devices); the peak comes from ``--peak_tflops`` (per device) or a table of known
accelerators (dense bf16); on a CPU it is unknown and MFU is not printed unless given.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ircore import files  # noqa: E402
from ircore import mesh as mesh_lib  # noqa: E402
from ircore.config_utils import load_config_file  # noqa: E402
from resshift_jax import train as rtrain  # noqa: E402

# Dense bf16 peak TFLOP/s per device (vendor data sheets), matched against jax's device_kind.
PEAK_TFLOPS = {
    "H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "V100": 125.0,
    "TPU v6": 918.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v4": 275.0, "TPU v3": 123.0,
}


def peak_tflops(device: jax.Device, override: float | None) -> float | None:
    if override:
        return override
    kind = device.device_kind
    for name, value in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return value
    return None


def step_flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


def throughput(global_batch: int, step_s: float) -> dict:
    """``{"step_s", "steps_per_s", "images_per_s"}`` of a step taking ``step_s`` seconds on ``global_batch``
    images (images/s = global batch x steps/s)."""
    if step_s <= 0:
        raise ValueError(f"step time must be positive, got {step_s}")
    return {"step_s": step_s, "steps_per_s": 1.0 / step_s, "images_per_s": global_batch / step_s}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs/resshift/realsr_x4_v3.py"))
    parser.add_argument("--batch", type=int, default=8, help="global batch (images per step)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--dtype", default="bfloat16", help="UNet / VQ / LPIPS compute dtype")
    parser.add_argument("--lpips_weight", type=float, default=None, help="default: the config's")
    parser.add_argument("--task", default=None, help="override config.task (e.g. bicsr: no Real-ESRGAN cost)")
    parser.add_argument("--accum", type=int, default=1, help="gradient-accumulation micro-batches")
    parser.add_argument("--mesh", default="-1,1", help="data,fsdp mesh shape")
    parser.add_argument("--crop", type=int, default=None, help="HQ crop size (default: the config's)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="per-device peak for MFU")
    parser.add_argument("--out", default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)

    cfg = load_config_file(args.config)
    cfg.train.update({"global_batch": args.batch, "accum_steps": args.accum, "compute_dtype": args.dtype,
                      "frozen_dtype": args.dtype, "mesh_shape": tuple(int(v) for v in args.mesh.split(",")),
                      "eval_every": 0})
    cfg.autoencoder_random_init = True
    cfg.autoencoder_checkpoint = ""
    cfg.lpips.weights = "random"
    if args.lpips_weight is not None:
        cfg.loss.lpips_weight = args.lpips_weight
    if args.task:
        cfg.task = args.task
    crop = args.crop or int(cfg.data.crop_size)

    tr = rtrain.build_trainer(cfg, "/tmp/unused-benchmark-workdir", print_fn=None)
    rows = tr.local_rows
    rng = np.random.default_rng(0)
    local = {"hq": rng.integers(0, 256, (rows[1] - rows[0], crop, crop, 3), dtype=np.uint8)}
    batch = mesh_lib.to_global(local, tr.mesh, tr.global_batch)
    state = tr.init_state()

    t0 = time.perf_counter()
    compiled = tr.train_step.lower(state, tr.frozen, batch).compile()
    compile_s = time.perf_counter() - t0
    flops = step_flops(compiled)
    for _ in range(2):
        state, metrics = compiled(state, tr.frozen, batch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = compiled(state, tr.frozen, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t0) / args.steps

    n_dev = tr.mesh.size
    if flops is not None and n_dev > 1:
        flops *= n_dev  # cost_analysis describes the per-device SPMD program
    device = jax.devices()[0]
    peak = peak_tflops(device, args.peak_tflops)
    unet_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
    result = {
        "device": f"{n_dev} x {device.device_kind} ({device.platform})",
        "config": pathlib.Path(args.config).name, "task": cfg.task, "unet_params": unet_params,
        "global_batch": args.batch, "accum_steps": args.accum, "crop": crop, "dtype": args.dtype,
        "lpips_weight": float(cfg.loss.lpips_weight), "mesh": dict(tr.mesh.shape),
        "compile_s": round(compile_s, 2), **throughput(args.batch, step_s),
        "step_tflop": None if flops is None else flops / 1e12,
        "achieved_tflops": None if flops is None else flops / step_s / 1e12,
        "mfu": None if (flops is None or peak is None) else flops / step_s / (peak * 1e12 * n_dev),
        "loss": float(metrics["loss"]),
    }
    width = max(len(k) for k in result)
    for k, v in result.items():
        shown = f"{v:.4g}" if isinstance(v, float) else ("n/a (unknown peak)" if v is None and k == "mfu" else v)
        print(f"{k:<{width}}  {shown}")
    if args.out:
        files.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
