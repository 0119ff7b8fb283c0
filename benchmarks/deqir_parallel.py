"""Sequential DDIM + DDNM vs DeqIR's parallel fixed-point solve, for several chain lengths T.

    python benchmarks/deqir_parallel.py                       # tiny UNet, 32x32, CPU-friendly
    python benchmarks/deqir_parallel.py --model configs/deqir/models/imagenet256_uncond.py --steps 10,25

Prints a table (T, sampler, map evaluations, NFE, wall time, max |x0 - x0_seq|, PSNR vs the clean photo)
and writes it as JSON. Weights: a converted checkpoint (--checkpoint) or random ones (timing only; the
agreement columns are still meaningful since both samplers use the same prior). The parallel rows use
Anderson with the official settings, a tight variant and the default solver; every run is compiled before
it is timed. (Rounds, compute and agreement of every solver on the embedded prior: deqir_solvers.py.)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from deqir_jax import models
from deqir_jax import operators as ops
from deqir_jax.restore import ChainSettings, make_restore_fn
from deqir_jax.solver_settings import DEFAULT, OFFICIAL_ANDERSON
from ircore import checkpoints, files, mesh, metrics
from ircore.config_utils import load_config_file

TINY = dict(
    arch="adm", image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2,2",
    attention_resolutions="16,8", num_heads=4, num_head_channels=16, num_heads_upsample=-1,
    use_scale_shift_norm=True, resblock_updown=True, learn_sigma=True, class_cond=False, dropout=0.0,
    use_new_attention_order=False, dtype="float32",
)


def photo(size: int) -> np.ndarray:
    from skimage import data

    img = Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC)
    return np.asarray(img, np.float32)[None] / 127.5 - 1.0


def fixture_unet():
    """(model config, params) of the official tiny UNet fixture, through the converter, if the fixture
    folder ($REFERENCE_FIXTURES, default ../shared/fixtures) is there; else None."""
    import os

    from deqir_jax import convert_keys
    from deqir_jax.models import adm

    root = pathlib.Path(os.environ.get("REFERENCE_FIXTURES", "../shared/fixtures"))
    npz = root / "deqir" / "tiny_unet.npz"
    if not npz.is_file():
        return None
    meta = json.loads(npz.with_suffix(".json").read_text())
    cfg = adm.config_from_create_model_kwargs(meta["constructor_kwargs"])
    with np.load(npz) as fx:
        state = {k[len("param/"):]: fx[k] for k in fx.files if k.startswith("param/")}
    return cfg, convert_keys.convert_adm_state_dict(state, cfg)


def random_params(model, size: int):
    """Random weights with every layer active (no zero-initialised output convs): N(0,1)/sqrt(fan_in)."""
    x = jnp.zeros((1, size, size, 3))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.int32))["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    new = []
    for k, leaf in zip(keys, leaves):
        fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 1
        scale = 1.0 / np.sqrt(fan_in) if leaf.ndim > 1 else 0.1
        new.append(jax.random.normal(k, leaf.shape, leaf.dtype) * scale + (leaf if leaf.ndim == 1 else 0))
    return jax.tree_util.tree_unflatten(tree, new)


def timed(fn, *args, repeats: int):
    out = jax.block_until_ready(fn(*args))  # compile + warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        out = jax.block_until_ready(fn(*args))
    return out, (time.perf_counter() - start) / repeats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="model config file (default: a tiny 32x32 ADM UNet)")
    parser.add_argument("--checkpoint", default="", help="orbax checkpoint (default: random weights)")
    parser.add_argument("--steps", default="10,25,50,100", help="chain lengths T")
    parser.add_argument("--max-iter", type=int, default=15, help="official Anderson budget")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/deqir_parallel.json")
    args = parser.parse_args(argv)

    model_cfg = load_config_file(args.model).model if args.model else ml_collections.ConfigDict(TINY)
    model = models.model_from_config(model_cfg)
    size = int(model_cfg.image_size)
    weights = "converted"
    if args.checkpoint:
        params = checkpoints.restore_params(args.checkpoint)
    elif not args.model and (fixture := fixture_unet()) is not None:
        model_cfg, params = fixture
        model, weights = models.model_from_config(model_cfg), "reference-fixture tiny UNet"
    else:
        params, weights = random_params(model, size), "random"
    clean = photo(size)
    op = ops.make_operator("sr_averagepooling", (size, size), factor=4)
    y = op.A(jnp.asarray(clean))
    kx, kz = jax.random.split(jax.random.PRNGKey(666))
    x_T = jax.random.normal(kx, (1, size, size, 3))
    z = jax.random.normal(kz, (1, size, size, 3))
    sharding = mesh.time_sharding(mesh.make_mesh())
    chunk = args.chunk_size or None
    rows = []
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, image {size}x{size}, SR x4, "
          f"{weights} weights")
    header = f"{'T':>4} {'sampler':<22} {'evals':>5} {'NFE':>6} {'wall s':>8} {'max|dx0|':>10} {'PSNR':>7} {'status':<9}"
    print(header)
    print("-" * len(header))
    for T in [int(s) for s in args.steps.split(",")]:
        official = dataclasses.replace(OFFICIAL_ANDERSON, max_iter=args.max_iter, chunk_size=chunk)
        variants = [
            ("sequential", ChainSettings(timesteps=T, sampler="sequential")),
            ("parallel anderson", ChainSettings(timesteps=T, solver=official)),
            ("parallel anderson tight", ChainSettings(timesteps=T, solver=dataclasses.replace(
                official, max_iter=max(args.max_iter, T + 5), tol=1e-5))),
            ("parallel default", ChainSettings(timesteps=T, solver=dataclasses.replace(DEFAULT, chunk_size=chunk))),
        ]
        x0_seq = None
        for name, settings in variants:
            fn = make_restore_fn(model, settings, sharding=None if settings.sampler == "sequential" else sharding)
            out, wall = timed(fn, params, op, y, x_T, z, repeats=args.repeats)
            x0 = np.asarray(out.x0)
            if x0_seq is None:
                x0_seq = x0
            psnr = float(metrics.psnr(np.clip((x0 + 1) / 2, 0, 1), (clean + 1) / 2)[0])
            from deqir_jax.anderson import STATUS_NAMES

            row = dict(T=T, sampler=name, map_evaluations=int(out.n_evals), nfe=int(out.image_evals),
                       wall_s=wall, max_abs_diff_vs_sequential=float(np.abs(x0 - x0_seq).max()), psnr=psnr,
                       status=STATUS_NAMES[int(out.status)])
            rows.append(row)
            print(f"{T:>4} {name:<22} {row['map_evaluations']:>5} {row['nfe']:>6} {wall:>8.3f} "
                  f"{row['max_abs_diff_vs_sequential']:>10.2e} {psnr:>7.2f} {row['status']:<9}")
    out_path = pathlib.Path(args.out)
    files.write_json(out_path, dict(device=str(jax.devices()[0]), device_count=jax.device_count(),
                                    image_size=size, rows=rows))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
