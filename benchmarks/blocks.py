r"""ADM building blocks one at a time: where a whole-network gap against the official code lies.

Times this project's ADM blocks (``ircore.layers``: ResBlock with scale-shift norm, AttentionBlock with 64-channel
heads, GroupNorm32 + SiLU, a 3x3 conv) at the shapes they have inside the networks, float32, random weights, compiled
as the samplers compile (``ircore.compiling``). With ``--official PATH`` (a checkout of openai/guided-diffusion, torch
installed; nothing of it is committed) the same blocks of guided-diffusion run in this process too, interleaved in
``--pairs`` pairs of ``--repeats`` calls, and the ratio ours / official is the median of the per-pair ratios. Start it
with the glibc settings the official comparison uses (``official_models.MALLOC_ENV``:
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824``) for the same
baseline as ``speed.py --official``.

    python benchmarks/blocks.py                                   # ours only, the ADM 256 shapes
    python benchmarks/blocks.py --official /path/to/guided-diffusion --cases res:256:256:256,conv:256:256:256

A case is ``kind:size:in_channels:out_channels[:batch]`` with kind one of res, attn, gn, conv (gn and attn keep
the channels; batch 1 unless given: ``conv:128:256:256:4`` has the pixels of ``conv:256:256:256``). Prints a table
and writes JSON (default benchmarks/results/blocks_<platform>.json) with the glibc settings the run had.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import statistics
import sys
import time
from typing import Any, Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.official_models import MALLOC_ENV  # noqa: E402
from ircore import compiling  # noqa: E402

KINDS = ("res", "attn", "gn", "conv")
GLIBC_ENV_NAMES = (*MALLOC_ENV, "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")  # recorded in the JSON
EMB = 1024  # ADM 256's embedding width (4 x 256 channels)
ADM256_CASES = ("res:256:256:256,res:256:512:256,res:128:256:256,res:64:512:512,res:32:512:512,res:16:1024:1024,"
                "attn:32:512:512,attn:16:1024:1024,attn:8:1024:1024,conv:256:256:256,gn:256:256:256,gn:128:256:256")


def parse_case(text: str) -> tuple[str, int, int, int, int]:
    """``kind:size:in:out[:batch]`` -> (kind, size, in, out, batch)."""
    parts = text.split(":")
    if (len(parts) not in (4, 5) or parts[0] not in KINDS
            or not all(p.isdigit() and int(p) > 0 for p in parts[1:])):
        raise SystemExit(f"error: case {text!r} is not kind:size:in_channels:out_channels[:batch] with kind in "
                         f"{', '.join(KINDS)} and positive sizes (e.g. res:64:512:512 or conv:128:256:256:4)")
    kind, size, cin, cout = parts[0], int(parts[1]), int(parts[2]), int(parts[3])
    batch = int(parts[4]) if len(parts) == 5 else 1
    if cin % 32 or cout % 32:
        raise SystemExit(f"error: case {text!r}: channels must be multiples of 32 (GroupNorm32)")
    if kind in ("attn", "gn") and cin != cout:
        raise SystemExit(f"error: case {text!r}: {kind} keeps its channels; give in_channels == out_channels")
    if kind == "attn" and cin % 64:
        raise SystemExit(f"error: case {text!r}: attention uses 64-channel heads; channels must divide by 64")
    return kind, size, cin, cout, batch


def case_name(kind: str, size: int, cin: int, cout: int, batch: int) -> str:
    return f"{kind}:{size}:{cin}:{cout}" + (f":{batch}" if batch != 1 else "")


def ours(kind: str, size: int, cin: int, cout: int, batch: int = 1, seed: int = 0) -> tuple[Callable[[], Any], dict]:
    """A zero-argument call of our block (compiled) and its NHWC inputs as numpy arrays."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import linen as nn

    from ircore import layers

    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((batch, size, size, cin), np.float32)}
    if kind == "res":
        inputs["emb"] = rng.standard_normal((batch, EMB), np.float32)
        module = layers.ResBlock(out_channels=cout, use_scale_shift_norm=True)
    elif kind == "attn":
        module = layers.AttentionBlock(num_head_channels=64)
    elif kind == "gn":
        class GNSiLU(nn.Module):
            @nn.compact
            def __call__(self, x):
                return nn.silu(layers.GroupNorm32()(x))

        module = GNSiLU()
    else:
        module = layers.conv3x3(cout, name=None, dtype=jnp.float32, param_dtype=jnp.float32)
    args = tuple(jax.device_put(v) for v in inputs.values())
    params = module.init(jax.random.PRNGKey(seed), *args)
    compiled = jax.jit(module.apply).lower(params, *args).compile(
        compiler_options=compiling.sampling_options())
    return lambda: jax.block_until_ready(compiled(params, *args)), inputs


def official(kind: str, cin: int, cout: int, inputs: dict) -> Callable[[], Any]:
    """A zero-argument call of guided-diffusion's block (``guided_diffusion`` importable) on the same inputs."""
    import torch
    from guided_diffusion import unet as gd_unet

    x = torch.from_numpy(inputs["x"].transpose(0, 3, 1, 2).copy())
    if kind == "res":
        block = gd_unet.ResBlock(cin, EMB, 0.0, out_channels=cout, use_scale_shift_norm=True).eval()
        args = (x, torch.from_numpy(inputs["emb"]))
    elif kind == "attn":
        block, args = gd_unet.AttentionBlock(cin, num_head_channels=64).eval(), (x,)
    elif kind == "gn":
        block, args = torch.nn.Sequential(torch.nn.GroupNorm(32, cin), torch.nn.SiLU()).eval(), (x,)
    else:
        block, args = torch.nn.Conv2d(cin, cout, 3, padding=1).eval(), (x,)

    def call():
        with torch.inference_mode():
            return block(*args)

    return call


def median_time(call: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=ADM256_CASES,
                        help="comma-separated kind:size:in:out[:batch] (default: ADM 256's)")
    parser.add_argument("--official", default="", help="checkout of openai/guided-diffusion (torch needed)")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved (ours, official) pairs")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side and pair (median)")
    parser.add_argument("--out", default=None, help="JSON (default benchmarks/results/blocks_<platform>.json)")
    args = parser.parse_args(argv)
    args.cases = [parse_case(c) for c in args.cases.split(",") if c.strip()]
    if not args.cases:
        raise SystemExit("error: --cases is empty; give kind:size:in_channels:out_channels[:batch], "
                         "e.g. res:64:512:512")
    if args.pairs < 1 or args.repeats < 1:
        raise SystemExit("error: --pairs and --repeats must be >= 1")
    if args.official:
        if not pathlib.Path(args.official, "guided_diffusion").is_dir():
            raise SystemExit(f"error: --official {args.official} has no guided_diffusion folder; give a checkout of "
                             "openai/guided-diffusion")
        if importlib.util.find_spec("torch") is None:
            raise SystemExit("error: --official needs PyTorch: pip install torch (CPU build is enough)")
        sys.path.insert(0, str(pathlib.Path(args.official).resolve()))
    return args


def main(argv=None) -> dict:
    compiling.tune_cpu_xla_flags()  # as the sampling command lines run
    args = parse_args(argv)
    import jax

    from ircore import files

    platform = jax.devices()[0].platform
    out = pathlib.Path(args.out or REPO / f"benchmarks/results/blocks_{platform}.json")
    result: dict = {"platform": platform, "jax_version": jax.__version__, "official": args.official or None,
                    "pairs": args.pairs, "repeats": args.repeats, "loadavg_start": list(os.getloadavg()),
                    "glibc_env": {k: os.environ.get(k) for k in GLIBC_ENV_NAMES}, "rows": []}
    print(f"{'case':<20} {'ours ms':>9} {'official ms':>11} {'ours/official':>13}  pairs")
    for kind, size, cin, cout, batch in args.cases:
        name = case_name(kind, size, cin, cout, batch)
        ours_call, inputs = ours(kind, size, cin, cout, batch)
        off_call = official(kind, cin, cout, inputs) if args.official else None
        for call in filter(None, (ours_call, off_call)):
            call()  # warm-up
            call()
        ours_t, off_t = [], []
        for _ in range(args.pairs):
            ours_t.append(median_time(ours_call, args.repeats))
            if off_call is not None:
                off_t.append(median_time(off_call, args.repeats))
        row: dict = {"case": name, "ours_s": statistics.median(ours_t), "ours_pairs_s": ours_t}
        if off_t:
            ratios = [a / b for a, b in zip(ours_t, off_t)]
            row.update(official_s=statistics.median(off_t), official_pairs_s=off_t,
                       ratio_ours_over_official=statistics.median(ratios), pair_ratios=ratios)
            print(f"{name:<20} {row['ours_s'] * 1e3:>9.1f} {row['official_s'] * 1e3:>11.1f} "
                  f"{row['ratio_ours_over_official']:>13.3f}  {', '.join(f'{r:.2f}' for r in ratios)}", flush=True)
        else:
            print(f"{name:<20} {row['ours_s'] * 1e3:>9.1f} {'-':>11} {'-':>13}", flush=True)
        result["rows"].append(row)
        files.write_json(out, result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
