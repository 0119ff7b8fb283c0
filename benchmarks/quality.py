"""Restoration quality of the embedded default models on the held-out photos (never seen in training).

    python benchmarks/quality.py                       # all held-out photos, every row below (CPU: minutes)
    python benchmarks/quality.py --photos chelsea --timesteps 10 --max-iter 20 --out /tmp/q.json

Table 1, 64x64 (each photo centre-cropped and resized to the DeqIR image size, as ``deqir_jax.sample``):

* ``sr_x4``: y = bicubic x1/4 (DeqIR's ``sr_bicubic`` operator, which equals MATLAB ``imresize`` -- the
  ResShift ``bicsr`` degradation -- to float precision, so every method gets the same 16x16 input). Rows:
  ``bicubic`` (PyTorch bicubic up-sampling of y), ``resshift`` (the embedded ResShift-small, 4 steps),
  ``ddnm_sequential`` (DDIM + DDNM, one step after another) and the parallel DeqIR solves of the joint fixed
  point: ``deqir_anderson`` (the official Anderson settings: m 5, lambda 1e-3, beta 1, tol 1e-3, at most 15
  map evaluations, ``--max-iter``) and ``deqir_default`` (the sampler's default solver,
  ``deqir_jax.solver_settings.DEFAULT``), all with the embedded prior and the same x_T / z.
* ``deblur_gauss`` and ``inpainting`` (DeqIR presets): ``input`` (the blurred image / the masked image A^+ y),
  ``ddnm_sequential``, ``deqir_anderson`` and ``deqir_default``.

Table 2, full size: ResShift-small against bicubic on the whole held-out photos (MATLAB bicubic x1/4).

Columns: PSNR / SSIM (RGB, [0, 1], whole image, the DDNM / DeqIR protocol; Y-channel PSNR for ResShift too),
NFE (single-image network evaluations), map evaluations and solver status of the parallel solve, run time
(compiled programs; compilation reported apart). Checks printed at the end: ResShift beats bicubic on PSNR
(SR x4), and the parallel result agrees with the sequential one within 0.1 dB wherever the solver converged.
Every number is reported as measured. Results go to ``--out`` as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from deqir_jax import anderson, models
from deqir_jax.restore import make_restore_fn
from deqir_jax.solver_settings import OFFICIAL_ANDERSON
from deqir_jax.presets import build_operator, chain_settings_from_config
from deqir_jax.sample import prepare_image
from ircore import checkpoints, files, images, photos, scoring
from ircore.config_utils import load_config_file
from resshift_jax import resize
from resshift_jax import sample as rsample

REPO = pathlib.Path(__file__).resolve().parents[1]
DEQIR_TASKS = {"sr_x4": "sr_bicubic_x4.py", "deblur_gauss": "deblur_gauss.py", "inpainting": "inpainting.py"}


def timed(fn, *args, repeats: int = 1):
    """(result, compile seconds, best run seconds) of a jitted ``fn``."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return out, compile_s, best


def resshift_call(lq, nets, restorer, key):
    """(restored, first-call seconds incl. compilation, second-call seconds)."""
    run = lambda: np.asarray(jax.block_until_ready(restorer(lq, nets[0], nets[1], key)))  # noqa: E731
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    out = run()
    return out, first, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=",".join(photos.HELDOUT), help="held-out photo names")
    parser.add_argument("--tasks", default=",".join(DEQIR_TASKS), help="DeqIR tasks of table 1")
    parser.add_argument("--timesteps", type=int, default=0, help="DeqIR chain length (0: the preset's)")
    parser.add_argument("--max-iter", type=int, default=0, help="Anderson budget (0: the official 15)")
    parser.add_argument("--no-full-size", action="store_true", help="skip table 2")
    parser.add_argument("--prior", default="", help="DeqIR prior checkpoint (default: the embedded one)")
    parser.add_argument("--resshift-unet", default="", help="ResShift UNet checkpoint (default: the embedded one)")
    parser.add_argument("--out", default="benchmarks/results/quality.json")
    args = parser.parse_args()
    names = [n for n in args.photos.split(",") if n]
    tasks = [t for t in args.tasks.split(",") if t]
    for n in names:
        if n not in photos.HELDOUT:
            raise SystemExit(f"error: {n!r} is not a held-out photo ({', '.join(photos.HELDOUT)})")
    for t in tasks:
        if t not in DEQIR_TASKS:
            raise SystemExit(f"error: unknown task {t!r}; expected some of {', '.join(DEQIR_TASKS)}")

    rcfg = load_config_file(REPO / "configs/resshift/embedded_x4.py")
    if args.resshift_unet:
        rcfg.unet_checkpoint = args.resshift_unet
    rnets = rsample.load_networks(rcfg)
    score = scoring.Scorer()  # LPIPS too when the lpips extra is installed
    if not score.has_lpips:
        print("LPIPS not measured: install the lpips extra (pip install '.[lpips]')")
    restorer = rsample.pipeline.make_restorer(rcfg)
    sf = int(rcfg.diffusion.sf)
    rows, full_rows = [], []
    deqir_params = None
    for task in tasks:
        cfg = load_config_file(REPO / "configs/deqir" / DEQIR_TASKS[task], "embedded")
        if args.timesteps:
            cfg.timesteps = args.timesteps
        if deqir_params is None:
            deqir_params = checkpoints.restore_params(args.prior or cfg.checkpoint)
        model = models.model_from_config(cfg.model)
        size = int(cfg.image_size)
        op = build_operator(cfg, (size, size))
        preset = chain_settings_from_config(cfg)
        official = dataclasses.replace(OFFICIAL_ANDERSON, max_iter=args.max_iter or OFFICIAL_ANDERSON.max_iter)
        settings = {"ddnm_sequential": dataclasses.replace(preset, sampler="sequential"),
                    "deqir_anderson": dataclasses.replace(preset, sampler="parallel", solver=official),
                    "deqir_default": dataclasses.replace(preset, sampler="parallel")}
        fns = {label: make_restore_fn(model, s) for label, s in settings.items()}
        for index, name in enumerate(names):
            x = prepare_image(images.read_image(photos.path(name)), size, cfg.resize)
            y = op.A(jnp.asarray(x))
            key_xt, key_z, _ = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), index), 3)
            x_T = jax.random.normal(key_xt, x.shape, jnp.float32)
            z = jax.random.normal(key_z, x.shape, jnp.float32)
            base = {"photo": name, "task": task, "size": size, "timesteps": int(cfg.timesteps)}
            if task == "sr_x4":
                lq = np.asarray(y)
                bic = np.asarray(resize.interpolate_bicubic(lq, scale_factor=4.0))
                rows.append({**base, "method": "bicubic", **rsample.image_scores(bic, x, score), "nfe": 0, "run_s": 0.0})
                out, first, second = resshift_call(lq, rnets, restorer, rsample.image_key(rcfg.sample.seed, name))
                rows.append({**base, "method": "resshift", **rsample.image_scores(out, x, score),
                             "nfe": int(rcfg.diffusion.steps), "run_s": second, "compile_s": max(first - second, 0.0)})
            else:
                rows.append({**base, "method": "input", **rsample.image_scores(op.measurement_image(y), x, score),
                             "nfe": 0, "run_s": 0.0})
            seq = None
            for label, fn in fns.items():
                res, compile_s, run_s = timed(fn, deqir_params, op, y, x_T, z)
                n_evals = int(res.n_evals)
                row = {**base, "method": label, **rsample.image_scores(res.x0, x, score), "nfe": int(res.image_evals),
                       "map_evaluations": n_evals, "status": anderson.STATUS_NAMES[int(res.status)],
                       "run_s": run_s, "compile_s": compile_s}
                if seq is None:
                    seq = (row, np.asarray(res.x0))
                else:
                    row["final_residual"] = float(np.asarray(res.residuals)[n_evals - 1])
                    row["max_abs_dx0_vs_sequential"] = float(np.max(np.abs(np.asarray(res.x0) - seq[1])))
                    row["dpsnr_vs_sequential"] = row["psnr"] - seq[0]["psnr"]
                rows.append(row)
                print(_line(row), flush=True)

    if not args.no_full_size:
        for name in names:
            hq = images.read_image(photos.path(name))
            hq = hq[:, : hq.shape[1] // sf * sf, : hq.shape[2] // sf * sf]
            res = rsample.degrade_and_restore(hq, restorer, rnets, rsample.image_key(rcfg.sample.seed, name))
            _, first, second = resshift_call(res["lq"], rnets, restorer, rsample.image_key(rcfg.sample.seed, name))
            base = {"photo": name, "task": "sr_x4_full", "size": list(hq.shape[1:3])}
            full_rows.append({**base, "method": "bicubic", **rsample.image_scores(res["bicubic"], res["hq"], score), "nfe": 0,
                              "run_s": 0.0})
            full_rows.append({**base, "method": "resshift", **rsample.image_scores(res["restored"], res["hq"], score),
                              "nfe": int(rcfg.diffusion.steps), "run_s": second,
                              "compile_s": max(first - second, 0.0)})
            for row in full_rows[-2:]:
                print(_line(row), flush=True)

    checks = _checks(rows, full_rows)
    print()
    _table(rows + full_rows)
    print()
    for line in checks["lines"]:
        print(line)
    out = pathlib.Path(args.out)
    files.write_json(out, {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
                           "rows": rows, "full_size_rows": full_rows,
                           "checks": {k: v for k, v in checks.items() if k != "lines"}})
    print(f"wrote {out}")


def _line(r: dict) -> str:
    extra = f" evals {r['map_evaluations']} {r['status']}" if "status" in r else ""
    lp = f" LPIPS {r['lpips']:.4f}" if r.get("lpips") is not None else ""
    return (f"{r['photo']:>8} {r['task']:>12} {r['method']:>16}: PSNR {r['psnr']:6.2f} SSIM {r['ssim']:.4f}{lp} "
            f"NFE {r['nfe']:4d} run {r['run_s']:6.2f} s{extra}")


def _table(rows: list[dict]) -> None:
    head = ("photo", "task", "method", "PSNR", "SSIM", "LPIPS", "PSNR-Y", "NFE", "evals", "status", "run s", "compile s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = (r["photo"], r["task"], r["method"], f"{r['psnr']:.2f}", f"{r['ssim']:.4f}",
                 f"{r['lpips']:.4f}" if r.get("lpips") is not None else "-", f"{r['psnr_y']:.2f}",
                 str(r["nfe"]), str(r.get("map_evaluations", "")), r.get("status", ""), f"{r['run_s']:.2f}",
                 f"{r['compile_s']:.1f}" if "compile_s" in r else "")
        print("| " + " | ".join(cells) + " |")


def _checks(rows: list[dict], full_rows: list[dict]) -> dict:
    lines, beats, agree = [], [], []
    for table in (rows, full_rows):
        by = {}
        for r in table:
            by.setdefault((r["photo"], r["task"]), {})[r["method"]] = r
        for (photo, task), m in by.items():
            if "resshift" in m and "bicubic" in m:
                ok = m["resshift"]["psnr"] > m["bicubic"]["psnr"]
                beats.append(ok)
                lines.append(f"{photo} {task}: ResShift {m['resshift']['psnr']:.2f} dB vs bicubic "
                             f"{m['bicubic']['psnr']:.2f} dB -> {'beats' if ok else 'DOES NOT beat'} bicubic")
            for method in ("deqir_anderson", "deqir_default"):
                par = m.get(method)
                if par is None:
                    continue
                converged = par["status"] == "converged"
                d = par["dpsnr_vs_sequential"]
                if converged:
                    agree.append(abs(d) <= 0.1)
                lines.append(f"{photo} {task} {method}: parallel - sequential = {d:+.3f} dB, max|dx0| "
                             f"{par['max_abs_dx0_vs_sequential']:.2e} ({par['status']} after "
                             f"{par['map_evaluations']} evaluations, final residual {par['final_residual']:.1e})"
                             + ("" if converged else " -- not converged, agreement not required"))
    summary = {"resshift_beats_bicubic": all(beats) if beats else None,
               "parallel_agrees_where_converged": all(agree) if agree else None,
               "converged_solves": len(agree)}
    lines.append(f"ResShift beats bicubic on PSNR everywhere: {summary['resshift_beats_bicubic']}; parallel within "
                 f"0.1 dB of sequential on all {len(agree)} converged solves: "
                 f"{summary['parallel_agrees_where_converged']}")
    return {**summary, "lines": lines}


if __name__ == "__main__":
    main()
