"""Restoration quality of the embedded default models on the held-out photos (``ircore.photos.HELDOUT``: 10
source photographs that training never reads).

    python benchmarks/quality.py                       # every held-out photo, every row below (CPU: ~20 min)
    python benchmarks/quality.py --photos chelsea --timesteps 10 --max-iter 20 --out /tmp/q.json
    python benchmarks/quality.py --tasks sr_x4 --methods bicubic,resshift,ddnm_sequential
    python benchmarks/quality.py --dtype bfloat16 --out benchmarks/results/quality_bf16.json   # vs float32
    python benchmarks/quality.py --curve-resshift RUN --curve-prior RUN --out benchmarks/results/quality_curve.json

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
LPIPS-VGG (with the ``lpips`` extra), NFE (single-image network evaluations), map evaluations and solver status
of the parallel solve, run time (compiled programs; compilation reported apart). Then a summary per task and
method: means, the mean and worst PSNR change against the baseline (bicubic for SR, the degraded input
otherwise) and how many photos fall more than 0.3 dB below it; and the targets, each marked met or not: ResShift
at full size +0.3 dB mean over bicubic, no photo below -0.3 dB, lower mean LPIPS; DDIM + DDNM with the prior
+0.5 dB mean over bicubic for SR x4; the parallel result within 0.1 dB of the sequential one wherever the
solver converged. Every number is reported as measured. Results go to ``--out`` as JSON.

Curve mode (``--curve-resshift`` / ``--curve-prior``, training workdirs): the same ResShift full-size rows,
and the DDIM + DDNM SR x4 rows, for every checkpoint a run kept, against the training time to that step
(from the run's ``metrics.jsonl``): quality against training time.
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
from ircore import checkpoints, compiling, files, photos, scoring
from ircore.config_utils import load_config_file
from resshift_jax import resize
from resshift_jax import sample as rsample

REPO = pathlib.Path(__file__).resolve().parents[1]
DEQIR_TASKS = {"sr_x4": "sr_bicubic_x4.py", "deblur_gauss": "deblur_gauss.py", "inpainting": "inpainting.py"}


def compile_timed(fn, *args):
    """(compiled ``fn`` for these argument shapes, compile seconds)."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - start


def timed(compiled, *args, repeats: int = 1):
    """(result, best run seconds) of a compiled function."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return out, best


def resshift_call(lq, nets, restorer, key):
    """(restored, first-call seconds incl. compilation, second-call seconds)."""
    run = lambda: np.asarray(jax.block_until_ready(restorer(lq, nets[0], nets[1], key)))  # noqa: E731
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    out = run()
    return out, first, time.perf_counter() - start


METHODS = ("bicubic", "input", "resshift", "ddnm_sequential", "deqir_anderson", "deqir_default")
BASELINE = {"sr_x4": "bicubic", "sr_x4_full": "bicubic", "deblur_gauss": "input", "inpainting": "input"}
TARGETS = {"resshift_full_mean_gain_db": 0.3, "resshift_full_worst_gain_db": -0.3, "ddnm_sr_x4_mean_gain_db": 0.5}


def resshift_full_rows(names, rcfg, rnets, restorer, score, timing: bool = True) -> list[dict]:
    """Table 2: bicubic and ResShift rows on the whole photos (cropped to a multiple of the scale factor);
    ``timing``: a second, timed call per photo (run seconds apart from compilation)."""
    rows = []
    for name in names:
        key = rsample.image_key(rcfg.sample.seed, name)
        res = rsample.degrade_and_restore(photos.read(name), restorer, rnets, key)
        first, second = res["wall_time_s"], res["wall_time_s"]
        if timing:
            _, first, second = resshift_call(res["lq"], rnets, restorer, key)
        base = {"photo": name, "task": "sr_x4_full", "size": list(res["hq"].shape[1:3])}
        rows.append({**base, "method": "bicubic", **rsample.image_scores(res["bicubic"], res["hq"], score),
                     "nfe": 0, "run_s": 0.0})
        rows.append({**base, "method": "resshift", **rsample.image_scores(res["restored"], res["hq"], score),
                     "nfe": int(rcfg.diffusion.steps), "run_s": second, "compile_s": max(first - second, 0.0)})
        for row in rows[-2:]:
            print(_line(row), flush=True)
    return rows


def deqir_rows(task, names, deqir_params, score, methods, args, resshift=None) -> list[dict]:
    """Table 1 rows of ``task`` (64x64) for the chosen ``methods``; ``resshift``: ``(rcfg, rnets, restorer)``."""
    cfg = load_config_file(REPO / "configs/deqir" / DEQIR_TASKS[task], "embedded")
    if args.timesteps:
        cfg.timesteps = args.timesteps
    cfg.model.dtype = args.dtype
    model = models.model_from_config(cfg.model)
    size = int(cfg.image_size)
    op = build_operator(cfg, (size, size))
    preset = chain_settings_from_config(cfg)
    official = dataclasses.replace(OFFICIAL_ANDERSON, max_iter=args.max_iter or OFFICIAL_ANDERSON.max_iter)
    settings = {"ddnm_sequential": dataclasses.replace(preset, sampler="sequential"),
                "deqir_anderson": dataclasses.replace(preset, sampler="parallel", solver=official),
                "deqir_default": dataclasses.replace(preset, sampler="parallel")}
    fns = {label: make_restore_fn(model, s) for label, s in settings.items() if label in methods}
    compiled = {}  # label -> (executable, compile seconds): every photo has the same shapes, so one compile each
    rows = []
    for index, name in enumerate(names):
        x = prepare_image(photos.read(name), size, cfg.resize)
        y = op.A(jnp.asarray(x))
        key_xt, key_z, _ = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), index), 3)
        x_T = jax.random.normal(key_xt, x.shape, jnp.float32)
        z = jax.random.normal(key_z, x.shape, jnp.float32)
        base = {"photo": name, "task": task, "size": size, "timesteps": int(cfg.timesteps)}
        if task == "sr_x4":
            lq = np.asarray(y)
            bic = np.asarray(resize.interpolate_bicubic(lq, scale_factor=4.0))
            rows.append({**base, "method": "bicubic", **rsample.image_scores(bic, x, score), "nfe": 0, "run_s": 0.0})
            if resshift is not None and "resshift" in methods:
                rcfg, rnets, restorer = resshift
                out, first, second = resshift_call(lq, rnets, restorer, rsample.image_key(rcfg.sample.seed, name))
                rows.append({**base, "method": "resshift", **rsample.image_scores(out, x, score),
                             "nfe": int(rcfg.diffusion.steps), "run_s": second,
                             "compile_s": max(first - second, 0.0)})
        else:
            rows.append({**base, "method": "input", **rsample.image_scores(op.measurement_image(y), x, score),
                         "nfe": 0, "run_s": 0.0})
        seq = None
        for label, fn in fns.items():
            if label not in compiled:
                compiled[label] = compile_timed(fn, deqir_params, op, y, x_T, z)
            executable, compile_s = compiled[label]
            res, run_s = timed(executable, deqir_params, op, y, x_T, z)
            n_evals = int(res.n_evals)
            row = {**base, "method": label, **rsample.image_scores(res.x0, x, score), "nfe": int(res.image_evals),
                   "map_evaluations": n_evals, "status": anderson.STATUS_NAMES[int(res.status)],
                   "run_s": run_s, "compile_s": compile_s}
            if label == "ddnm_sequential":
                seq = (row, np.asarray(res.x0))
            elif seq is not None:
                row["final_residual"] = float(np.asarray(res.residuals)[n_evals - 1])
                row["max_abs_dx0_vs_sequential"] = float(np.max(np.abs(np.asarray(res.x0) - seq[1])))
                row["dpsnr_vs_sequential"] = row["psnr"] - seq[0]["psnr"]
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (task, method): photo count, mean PSNR / SSIM / LPIPS, and against the task's baseline method on the
    same photos: mean and worst PSNR change (with the worst photo), photos more than 0.3 dB below, mean LPIPS
    change (negative = better)."""
    by_task: dict = {}
    for r in rows:
        by_task.setdefault(r["task"], {}).setdefault(r["method"], {})[r["photo"]] = r
    out = []
    for task, methods in by_task.items():
        base = methods.get(BASELINE.get(task, ""), {})
        for method, per_photo in methods.items():
            rs = list(per_photo.values())
            lp = [r["lpips"] for r in rs if r.get("lpips") is not None]
            entry = {"task": task, "method": method, "photos": len(rs),
                     "psnr": float(np.mean([r["psnr"] for r in rs])), "ssim": float(np.mean([r["ssim"] for r in rs])),
                     "lpips": float(np.mean(lp)) if len(lp) == len(rs) else None}
            gains = {p: r["psnr"] - base[p]["psnr"] for p, r in per_photo.items() if p in base}
            if gains and method != BASELINE.get(task):
                worst = min(gains, key=gains.get)
                entry.update({"mean_gain_db": float(np.mean(list(gains.values()))), "worst_gain_db": gains[worst],
                              "worst_photo": worst, "below_minus_0p3_db": sum(g < -0.3 for g in gains.values())})
                dl = [r["lpips"] - base[p]["lpips"] for p, r in per_photo.items()
                      if p in base and r.get("lpips") is not None and base[p].get("lpips") is not None]
                entry["mean_lpips_change"] = float(np.mean(dl)) if len(dl) == len(gains) else None
            out.append(entry)
    return out


def _summary_table(summary: list[dict]) -> None:
    head = ("task", "method", "photos", "PSNR", "SSIM", "LPIPS", "mean dPSNR", "worst dPSNR", "< -0.3 dB", "dLPIPS")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for e in summary:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        cells = (e["task"], e["method"], str(e["photos"]), f"{e['psnr']:.2f}", f"{e['ssim']:.4f}",
                 fmt(e["lpips"], ".4f"), fmt(e.get("mean_gain_db"), "+.2f"),
                 "-" if "worst_gain_db" not in e else f"{e['worst_gain_db']:+.2f} ({e['worst_photo']})",
                 str(e.get("below_minus_0p3_db", "-")), fmt(e.get("mean_lpips_change"), "+.4f"))
        print("| " + " | ".join(cells) + " |")


def _training_minutes(run: pathlib.Path) -> dict[int, float]:
    """Cumulative training seconds / 60 at each logged step of a run (``metrics.jsonl``'s step times)."""
    import json  # noqa: PLC0415

    minutes, total, last = {}, 0.0, 0
    path = run / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("kind") == "train" and "step_time" in rec:
                total += float(rec["step_time"]) * (int(rec["step"]) - last)
                last = int(rec["step"])
                minutes[last] = total / 60.0
    return minutes


def _at_step(minutes: dict[int, float], step: int) -> float | None:
    logged = [s for s in minutes if s <= step]
    return minutes[max(logged)] * step / max(logged) if logged else None


def _steps(store, wanted: str) -> list[int]:
    """The kept steps of a run, or those of ``wanted`` (comma-separated) that it kept."""
    kept = store.all_steps()
    chosen = [int(v) for v in wanted.split(",") if v] if wanted else kept
    missing = sorted(set(chosen) - set(kept))
    if missing:
        raise SystemExit(f"error: steps {missing} are not kept in {store.directory} (kept: {kept})")
    return chosen


def curve(args, names, score) -> dict:
    """Quality against training time for every kept checkpoint of the given runs."""
    out = {}
    if args.curve_resshift:
        run = pathlib.Path(args.curve_resshift)
        rcfg = load_config_file(REPO / "configs/resshift/embedded_x4.py")
        restorer = rsample.pipeline.make_restorer(rcfg)
        store = checkpoints.TrainCheckpoints(run / "checkpoints", every=1, keep=1000)
        minutes, points = _training_minutes(run), []
        for step in _steps(store, args.curve_steps):
            print(f"ResShift run {run}, step {step}", flush=True)
            nets = (store.restore_ema_params(step), None)
            summary = summarize(resshift_full_rows(names, rcfg, nets, restorer, score, timing=False))
            points.append({"step": step, "train_minutes": _at_step(minutes, step),
                           **{k: v for e in summary if e["method"] == "resshift" for k, v in e.items()}})
        store.close()
        out["resshift_full_size"] = points
    if args.curve_prior:
        run = pathlib.Path(args.curve_prior)
        store = checkpoints.TrainCheckpoints(run / "checkpoints", every=1, keep=1000)
        minutes, points = _training_minutes(run), []
        for step in _steps(store, args.curve_steps):
            print(f"DeqIR prior run {run}, step {step}", flush=True)
            rows = deqir_rows("sr_x4", names, store.restore_ema_params(step), score, ("ddnm_sequential",), args)
            points.append({"step": step, "train_minutes": _at_step(minutes, step),
                           **{k: v for e in summarize(rows) if e["method"] == "ddnm_sequential" for k, v in e.items()}})
        store.close()
        out["ddnm_sr_x4"] = points
    for label, points in out.items():
        print(f"\n{label}: step, training minutes, mean PSNR, mean dPSNR vs bicubic, worst dPSNR, mean dLPIPS")
        for p in points:
            tm = "-" if p["train_minutes"] is None else f"{p['train_minutes']:.1f}"
            dl = "-" if p.get("mean_lpips_change") is None else f"{p['mean_lpips_change']:+.4f}"
            print(f"  {p['step']:6d} {tm:>7} {p['psnr']:6.2f} {p['mean_gain_db']:+.2f} {p['worst_gain_db']:+.2f} {dl}")
    return out


def main() -> None:
    compiling.tune_cpu_xla_flags()  # time the methods as the sampling command lines run them
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=",".join(photos.HELDOUT), help="held-out photo names")
    parser.add_argument("--tasks", default=",".join(DEQIR_TASKS), help="tasks of table 1")
    parser.add_argument("--methods", default=",".join(METHODS), help="methods of table 1")
    parser.add_argument("--timesteps", type=int, default=0, help="DeqIR chain length (0: the preset's)")
    parser.add_argument("--max-iter", type=int, default=0, help="Anderson budget (0: the official 15)")
    parser.add_argument("--no-full-size", action="store_true", help="skip table 2")
    parser.add_argument("--prior", default="", help="DeqIR prior checkpoint (default: the embedded one)")
    parser.add_argument("--resshift-unet", default="", help="ResShift UNet checkpoint (default: the embedded one)")
    parser.add_argument("--curve-resshift", default="", help="a ResShift training workdir: curve mode")
    parser.add_argument("--curve-prior", default="", help="a DeqIR prior training workdir: curve mode")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="compute dtype of both networks (the accelerator switch; weights stay float32)")
    parser.add_argument("--curve-steps", default="", help="curve mode: only these kept steps (default: all)")
    parser.add_argument("--out", default="benchmarks/results/quality.json")
    args = parser.parse_args()
    names = [n for n in args.photos.split(",") if n]
    tasks = [t for t in args.tasks.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    for n in names:
        if n not in photos.HELDOUT:
            raise SystemExit(f"error: {n!r} is not a held-out photo ({', '.join(photos.HELDOUT)})")
    for t in tasks:
        if t not in DEQIR_TASKS:
            raise SystemExit(f"error: unknown task {t!r}; expected some of {', '.join(DEQIR_TASKS)}")
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"error: unknown method {m!r}; expected some of {', '.join(METHODS)}")
    for n in names:
        try:
            photos.path(n)
        except (ModuleNotFoundError, FileNotFoundError) as err:
            raise SystemExit(f"error: {err}") from None
    for run in (args.curve_resshift, args.curve_prior):
        if run and not (pathlib.Path(run) / "checkpoints").is_dir():
            raise SystemExit(f"error: {run} is not a training workdir (no checkpoints/ folder in it)")
    score = scoring.Scorer()  # LPIPS too when the lpips extra is installed
    if not score.has_lpips:
        print("LPIPS not measured: install the lpips extra (pip install '.[lpips]')")
    out = pathlib.Path(args.out)
    if args.curve_resshift or args.curve_prior:
        result = curve(args, names, score)
        files.write_json(out, {"device": str(jax.devices()[0]), "photos": names, **result})
        print(f"wrote {out}")
        return

    rcfg = load_config_file(REPO / "configs/resshift/embedded_x4.py")
    rcfg.sample.dtype = args.dtype
    if args.resshift_unet:
        rcfg.unet_checkpoint = args.resshift_unet
    rnets = rsample.load_networks(rcfg)
    restorer = rsample.pipeline.make_restorer(rcfg)
    prior = checkpoints.restore_params(args.prior or load_config_file(
        REPO / "configs/deqir" / DEQIR_TASKS["sr_x4"], "embedded").checkpoint)
    rows = []
    for task in tasks:
        rows += deqir_rows(task, names, prior, score, methods, args, resshift=(rcfg, rnets, restorer))
    full_rows = [] if args.no_full_size else resshift_full_rows(names, rcfg, rnets, restorer, score)

    summary = summarize(rows + full_rows)
    checks = _checks(rows, full_rows, summary)
    print()
    _table(rows + full_rows)
    print()
    _summary_table(summary)
    print()
    for line in checks["lines"]:
        print(line)
    files.write_json(out, {"device": str(jax.devices()[0]), "backend": jax.default_backend(), "photos": names,
                           "dtype": args.dtype,
                           "rows": rows, "full_size_rows": full_rows, "summary": summary,
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


def _checks(rows: list[dict], full_rows: list[dict], summary: list[dict]) -> dict:
    lines, agree, targets = [], [], {}
    by = {}
    for r in rows + full_rows:
        by.setdefault((r["photo"], r["task"]), {})[r["method"]] = r
    for (photo, task), m in by.items():
        for method in ("deqir_anderson", "deqir_default"):
            par = m.get(method)
            if par is None or "dpsnr_vs_sequential" not in par:
                continue
            converged = par["status"] == "converged"
            d = par["dpsnr_vs_sequential"]
            if converged:
                agree.append(abs(d) <= 0.1)
            lines.append(f"{photo} {task} {method}: parallel - sequential = {d:+.3f} dB, max|dx0| "
                         f"{par['max_abs_dx0_vs_sequential']:.2e} ({par['status']} after "
                         f"{par['map_evaluations']} evaluations, final residual {par['final_residual']:.1e})"
                         + ("" if converged else " -- not converged, agreement not required"))
    entry = {(e["task"], e["method"]): e for e in summary}
    full, ddnm = entry.get(("sr_x4_full", "resshift")), entry.get(("sr_x4", "ddnm_sequential"))
    if full is not None:
        targets["resshift_full_mean_gain"] = full["mean_gain_db"] >= TARGETS["resshift_full_mean_gain_db"]
        targets["resshift_full_worst_gain"] = full["worst_gain_db"] >= TARGETS["resshift_full_worst_gain_db"]
        if full.get("mean_lpips_change") is not None:
            targets["resshift_full_lpips_better"] = full["mean_lpips_change"] < 0
        lines.append(f"ResShift full size on {full['photos']} photos: mean {full['mean_gain_db']:+.2f} dB over bicubic "
                     f"(target +{TARGETS['resshift_full_mean_gain_db']}), worst {full['worst_gain_db']:+.2f} dB "
                     f"({full['worst_photo']}; target >= {TARGETS['resshift_full_worst_gain_db']})"
                     + ("" if full.get("mean_lpips_change") is None else
                        f", LPIPS change {full['mean_lpips_change']:+.4f} (target < 0)"))
    if ddnm is not None:
        targets["ddnm_sr_x4_mean_gain"] = ddnm["mean_gain_db"] >= TARGETS["ddnm_sr_x4_mean_gain_db"]
        lines.append(f"DDIM + DDNM SR x4 on {ddnm['photos']} photos: mean {ddnm['mean_gain_db']:+.2f} dB over bicubic "
                     f"(target +{TARGETS['ddnm_sr_x4_mean_gain_db']}), worst {ddnm['worst_gain_db']:+.2f} dB "
                     f"({ddnm['worst_photo']})")
    for name, met in targets.items():
        lines.append(f"target {name}: {'met' if met else 'NOT met'}")
    summary_checks = {"targets": targets, "parallel_agrees_where_converged": all(agree) if agree else None,
                      "converged_solves": len(agree)}
    lines.append(f"parallel within 0.1 dB of sequential on all {len(agree)} converged solves: "
                 f"{summary_checks['parallel_agrees_where_converged']}")
    return {**summary_checks, "lines": lines}


if __name__ == "__main__":
    main()
