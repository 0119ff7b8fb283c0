"""Why DeqIR's parallel solves need many rounds with the embedded prior: two measurements on one problem.

    python benchmarks/deqir_contraction.py                    # chelsea, SR x4, T = 25 (CPU: a few minutes)
    python benchmarks/deqir_contraction.py --photo coffee --task deblur_gauss --timesteps 50

1. **Picard front.** Picard iteration of the joint map from the official initial guess, compared row by row
   with the sequential chain after every round: how many leading rows are exact (RMS error < 1e-4), the RMS
   error of the first inexact row (the "front"), and x0's delta PSNR. A triangular map is exact after T
   rounds; it is fast only if the error behind the front shrinks from round to round (per-row contraction
   below 1). The per-round ratio of the front error is that contraction.
2. **Newton bound.** Newton's method on the chain with the *exact* Jacobians (one JVP of the network per row,
   sequentially, so it is not a parallel method): the number of iterations it needs to bring x0 within
   0.05 dB of the chain. A parallel quasi-Newton solver (Anderson, triangular Anderson) only approximates
   these Jacobians from its history, so this is a floor on its rounds from the same initial guess.

Writes ``--out`` (JSON) and prints both tables.
"""
from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from deqir_jax import fixed_point as fp, models, sequential
from deqir_jax.restore import chain_schedule
from deqir_jax.presets import build_operator
from deqir_jax.sample import prepare_image
from deqir_solvers import REPO, TASKS, psnr
from ircore import checkpoints, files, photos
from ircore.config_utils import load_config_file


def load_problem(task: str, photo: str, T: int) -> dict:
    """The problem of deqir_solvers.py (embedded prior, 64x64, the sampler's seeds) with its map and steps."""
    cfg = load_config_file(REPO / "configs/deqir" / TASKS[task], "embedded")
    model = models.model_from_config(cfg.model)
    params = checkpoints.restore_params(cfg.checkpoint)
    size = int(cfg.image_size)
    op = build_operator(cfg, (size, size))
    x = prepare_image(photos.read(photo), size, cfg.resize)
    y = op.A(jnp.asarray(x))
    index = photos.HELDOUT.index(photo) if photo in photos.HELDOUT else 0
    key_xt, key_z, _ = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), index), 3)
    x_T = jax.random.normal(key_xt, x.shape, jnp.float32)
    z = jax.random.normal(key_z, x.shape, jnp.float32)
    t, at, at_next = chain_schedule(T)
    nw, etw = float(cfg.nw), float(cfg.etw)
    eps_fn = lambda xx, tt: model.apply({"params": params}, xx, tt)  # noqa: E731
    coefs = fp.make_coefficients(op, x_T, y, z, t, at, at_next, nw=nw, etw=etw)
    seq = jax.jit(lambda: sequential.sequential_sample(eps_fn, op, x_T, y, z, t, at, at_next, nw=nw, etw=etw))()
    c1, c2 = sequential.step_weights(jnp.asarray(at_next), nw, etw)
    at_j, atn_j, t_j = jnp.asarray(at), jnp.asarray(at_next), jnp.asarray(t)

    def step(x_in, k):  # one DDIM + DDNM step of row k from its input (1, H, W, C), as sequential.py
        a, b = at_j[k], atn_j[k]
        eps = eps_fn(x_in, t_j[k][None])[..., :3]
        x0 = (x_in - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)
        x0_hat = x0 - op.A_pinv(op.A(x0) - y)
        return jnp.sqrt(b) * x0_hat + c1[k] * z + c2[k] * eps

    return dict(T=T, x=x, x_T=x_T, seq=seq, map=lambda X: fp.deq_map(eps_fn, op, coefs, X), step=step)


def picard_front(p: dict, rounds: int) -> list[dict]:
    T = p["T"]
    seq_states = np.asarray(p["seq"].states[:, 0])
    seq_psnr = psnr(np.asarray(p["seq"].x0), p["x"])
    step = jax.jit(lambda X: p["map"](X))
    X = jnp.repeat(p["x_T"], T, axis=0)
    out = []
    for n in range(1, rounds + 1):
        X = step(X)
        err = np.sqrt(np.mean((np.asarray(X) - seq_states) ** 2, axis=(1, 2, 3)))
        exact = int(np.argmax(err >= 1e-4)) if np.any(err >= 1e-4) else T
        front = float(err[exact]) if exact < T else 0.0
        out.append({"round": n, "exact_rows": exact, "front_rms": front, "max_rms": float(err.max()),
                    "x0_dpsnr": psnr(np.asarray(X[-1:]), p["x"]) - seq_psnr})
        print(f"round {n:3d}: exact rows {exact:3d}/{T}, front RMS error {front:.2e}, max {err.max():.2e}, "
              f"x0 dPSNR {out[-1]['x0_dpsnr']:+.3f}", flush=True)
        if exact == T:
            break
    return out


def newton_bound(p: dict, iterations: int) -> list[dict]:
    """Newton on X_k = step_k(X_{k-1}) with exact JVPs (forward substitution row by row)."""
    T, step_k = p["T"], p["step"]
    seq_x0 = np.asarray(p["seq"].x0)
    seq_psnr = psnr(seq_x0, p["x"])
    steps = jax.jit(jax.vmap(lambda x, k: step_k(x[None], k)[0]))
    jvp = jax.jit(lambda x, v, k: jax.jvp(lambda u: step_k(u, k), (x,), (v,))[1])
    X = jnp.repeat(p["x_T"], T, axis=0)
    out = []
    for it in range(1, iterations + 1):
        inputs = jnp.concatenate([p["x_T"], X[:-1]], axis=0)
        r = steps(inputs, jnp.arange(T)) - X
        delta, prev = [], None
        for k in range(T):
            d = r[k : k + 1] if k == 0 else r[k : k + 1] + jvp(inputs[k : k + 1], prev, k)
            delta.append(d)
            prev = d
        X = X + jnp.concatenate(delta, axis=0)
        value = psnr(np.asarray(X[-1:]), p["x"]) - seq_psnr
        out.append({"iteration": it, "x0_dpsnr": value, "max_abs_dx0": float(np.abs(np.asarray(X[-1:]) - seq_x0).max())})
        print(f"Newton iteration {it}: x0 dPSNR {value:+.3f}, max|dx0| {out[-1]['max_abs_dx0']:.2e}", flush=True)
        if abs(value) < 1e-3 and out[-1]["max_abs_dx0"] < 1e-3:
            break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", default="chelsea")
    parser.add_argument("--task", default="sr_x4", choices=sorted(TASKS))
    parser.add_argument("--timesteps", type=int, default=25)
    parser.add_argument("--newton-iterations", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/deqir_contraction.json")
    args = parser.parse_args()
    p = load_problem(args.task, args.photo, args.timesteps)
    front = picard_front(p, args.timesteps + 1)
    newton = newton_bound(p, args.newton_iterations)
    within = [r["round"] for r in front if abs(r["x0_dpsnr"]) <= 0.05]
    ratios = [b["front_rms"] / a["front_rms"] for a, b in zip(front, front[1:]) if a["front_rms"] > 0 and b["front_rms"] > 0]
    summary = {"photo": args.photo, "task": args.task, "T": args.timesteps,
               "picard_rounds_to_exact": front[-1]["round"],
               "picard_first_round_within_0.05dB": within[0] if within else None,
               "front_error_ratio_per_round_median": float(np.median(ratios)) if ratios else None,
               "newton_iterations_within_0.05dB": next((r["iteration"] for r in newton if abs(r["x0_dpsnr"]) <= 0.05), None)}
    print(json.dumps(summary, indent=1))
    out = pathlib.Path(args.out)
    files.write_json(out, {"summary": summary, "picard_front": front, "newton": newton}, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
