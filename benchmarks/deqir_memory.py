"""Compiled memory of a DeqIR restoration per configuration: does T = 100 with the ADM 256 prior fit 16 GB?

    python benchmarks/deqir_memory.py                                   # ADM 256 uncond, T 25 / 100
    python benchmarks/deqir_memory.py --model configs/deqir/models/embedded_small.py --steps 25 --chunks 0,5

Nothing runs: every configuration (chain length T, solver, rows per network call ``chunk_size``, compute dtype,
restore or restore + x_T optimisation) is lowered and compiled with abstract inputs
(``jax.ShapeDtypeStruct``: no weights are materialised), and XLA's ``memory_analysis()`` of the compiled program
gives argument (weights, y, x_T), output, temporary (activations, solver history) and generated-code bytes.
``peak`` = arguments + outputs + temporaries - aliased bytes, the device memory the program needs. The numbers
are those of the backend it runs on (XLA:CPU here, a GPU under ``benchmarks/device_check.sh``); buffer
assignment differs between backends, so a CPU table is an estimate of the GPU one, not a measurement of it.
Prints a table and writes JSON (default ``benchmarks/results/deqir_memory_<backend>.json``).
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deqir_jax import models  # noqa: E402
from deqir_jax import operators as ops  # noqa: E402
from deqir_jax.init_opt import InitOptConfig  # noqa: E402
from deqir_jax.restore import ChainSettings, make_init_opt_fn, make_restore_fn  # noqa: E402
from deqir_jax.solver_settings import DEFAULT, OFFICIAL_ANDERSON  # noqa: E402
from ircore import files  # noqa: E402
from ircore.config_utils import load_config_file  # noqa: E402

GIB = 1024**3
SOLVERS = {"default": DEFAULT, "official-anderson": OFFICIAL_ANDERSON}


def abstract_params(model, size: int, dtype: str):
    """ShapeDtypeStructs of the model's parameters (float32 storage whatever the compute dtype)."""
    x = jnp.zeros((1, size, size, 3))
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.int32)))["params"]


def compiled_memory(fn, *args) -> dict:
    """Compile ``fn`` (jitted) for abstract ``args``; the memory analysis in bytes and the compile time."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    arg, out, tmp = stats.argument_size_in_bytes, stats.output_size_in_bytes, stats.temp_size_in_bytes
    alias = getattr(stats, "alias_size_in_bytes", 0)
    return {"arguments_gib": arg / GIB, "outputs_gib": out / GIB, "temporaries_gib": tmp / GIB,
            "code_gib": stats.generated_code_size_in_bytes / GIB, "peak_gib": (arg + out + tmp - alias) / GIB,
            "compile_s": seconds}


def measure(model_cfg, *, steps: int, solver: str, chunk: int, dtype: str, mode: str) -> dict:
    cfg = model_cfg.copy_and_resolve_references()
    cfg.dtype = dtype
    model = models.model_from_config(cfg)
    size = int(cfg.image_size)
    settings = ChainSettings(timesteps=steps, solver=dataclasses.replace(SOLVERS[solver], chunk_size=chunk))
    op = ops.make_operator("sr_averagepooling", (size, size), factor=4)
    params = abstract_params(model, size, dtype)
    img = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    y = jax.ShapeDtypeStruct((1, *op.y_shape), jnp.float32)
    if mode == "restore":
        return compiled_memory(make_restore_fn(model, settings), params, op, y, img, img)
    fn = make_init_opt_fn(model, settings, InitOptConfig(n_epochs=1), "measurement")
    return compiled_memory(fn, params, op, y, img, img, img)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "configs/deqir/models/imagenet256_uncond.py"))
    parser.add_argument("--steps", default="25,100", help="chain lengths T")
    parser.add_argument("--solvers", default="default,official-anderson", help=f"of {', '.join(SOLVERS)}")
    parser.add_argument("--chunks", default="0,25,10,4", help="rows per network call (0 = the whole round)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--modes", default="restore", help="restore and/or init_opt (x_T optimisation step)")
    parser.add_argument("--budget-gib", type=float, default=16.0, help="device memory to compare with")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)

    model_cfg = load_config_file(args.model).model
    rows = []
    print(f"{'T':>4} {'solver':>18} {'chunk':>5} {'dtype':>9} {'mode':>8} {'args':>7} {'temp':>7} {'peak':>7} "
          f"{'fits':>5} {'compile':>8}")
    for steps in (int(s) for s in args.steps.split(",")):
        for solver in args.solvers.split(","):
            for chunk in (int(c) for c in args.chunks.split(",")):
                if chunk >= steps:
                    continue  # the same program as chunk 0
                for dtype in args.dtypes.split(","):
                    for mode in args.modes.split(","):
                        mem = measure(model_cfg, steps=steps, solver=solver, chunk=chunk, dtype=dtype, mode=mode)
                        row = {"T": steps, "solver": solver, "chunk_size": chunk, "dtype": dtype, "mode": mode,
                               **mem, "fits_budget": mem["peak_gib"] <= args.budget_gib}
                        rows.append(row)
                        print(f"{steps:>4} {solver:>18} {chunk or 'all':>5} {dtype:>9} {mode:>8} "
                              f"{mem['arguments_gib']:>6.2f}G {mem['temporaries_gib']:>6.2f}G "
                              f"{mem['peak_gib']:>6.2f}G {'yes' if row['fits_budget'] else 'NO':>5} "
                              f"{mem['compile_s']:>7.1f}s", flush=True)
    backend = jax.default_backend()
    out = pathlib.Path(args.out or REPO / f"benchmarks/results/deqir_memory_{backend}.json")
    files.write_json(out, {"model": args.model, "backend": backend, "device": jax.devices()[0].device_kind,
                           "budget_gib": args.budget_gib, "rows": rows,
                           "note": "compiled memory_analysis of this backend; nothing was run"})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
