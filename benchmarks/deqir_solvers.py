"""DeqIR's parallel solvers against the sequential chain: rounds, compute, time and agreement.

    python benchmarks/deqir_solvers.py                                   # full grid (CPU: hours)
    python benchmarks/deqir_solvers.py --timesteps 25 --tasks sr_x4 --photos chelsea   # one problem

For every chain length T (``--timesteps``), task (SR x4 bicubic, Gaussian deblur, inpainting: the embedded
presets of ``configs/deqir``) and held-out photo (``ircore.photos.HELDOUT``, 64x64, the embedded prior, the
seeds of ``deqir_jax.sample``) it runs the sequential DDIM + DDNM chain and each solver of ``--solvers``:

* ``picard``: fixed-point iteration of the whole chain, joint residual below 1e-3 (at most T + 1 rounds);
* ``anderson``: the official Anderson solve (m 5, lambda 1e-3, tol 1e-3, 15 map evaluations);
* ``taa``: triangular Anderson (m 3) over the whole chain, stopping when x0 is stable;
* ``window``: Picard on a live window of T/4 rows with row freezing, stopping when x0 is stable;
* ``taa_window``: triangular Anderson on the same window;
* ``warm``: ``taa_window`` after a warm start of T/5 coarse sequential rounds;
* ``taa_window8``: triangular Anderson on a fixed 8-row window (x0 tolerance 2e-3);
* ``default``: :data:`deqir_jax.solver_settings.DEFAULT` (the sampler's default).

``--merge a.json b.json`` combines earlier result files into one table (runs of a grid split over time).

Columns: rounds (sequential network calls, warm start included: the wall-time unit when every round is one
batched call), image evaluations (single-image network calls: the compute), CPU wall time of the compiled
solve, PSNR against the clean photo, delta PSNR and max |dx0| against the sequential chain, status, and
``rounds_0.05dB``: the first round from which x0 stays within 0.05 dB of the sequential chain (from the x0
of every round). It also times one batched eps call for batch sizes 1..T (``--batch-sizes``) and reports
a projected wall time ``rounds x t_call(rows per round)`` next to the sequential chain's ``T x t_call(1)``.
On this CPU the call time grows linearly with the batch, so the projection only pays off on an accelerator
whose batched call costs about the same for 1..T rows; the measured call times say which holds where it ran.

Writes ``--out`` (JSON) and ``--png`` (delta PSNR against rounds, per solver, mean over problems).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from deqir_jax import anderson, fixed_point as fp, models, sequential
from deqir_jax.restore import chain_schedule
from deqir_jax.presets import build_operator
from deqir_jax.sample import prepare_image
from deqir_jax.solver_settings import DEFAULT, OFFICIAL_ANDERSON, SolverSettings
from ircore import checkpoints, files, photos
from ircore.config_utils import load_config_file

REPO = pathlib.Path(__file__).resolve().parents[1]
TASKS = {"sr_x4": "sr_bicubic_x4.py", "deblur_gauss": "deblur_gauss.py", "inpainting": "inpainting.py"}
AGREE_DB = 0.05


def solver_settings(name: str, T: int) -> SolverSettings:
    """The settings each benchmark row stands for, at chain length T."""
    window = max(T // 4, 1)
    base = dict(max_iter=0, row_tol=1e-2, x0_tol=2e-3)  # (the windowed rows: a tight x0 stop)
    table = {
        "picard": SolverSettings(method="picard", window=0, stop="residual", tol=1e-3, row_tol=0.0, max_iter=T + 1),
        "anderson": OFFICIAL_ANDERSON,
        "taa": SolverSettings(method="triangular", m=3, window=0, stop="x0", **base),
        "window": SolverSettings(method="picard", window=window, stop="x0", **base),
        "taa_window": SolverSettings(method="triangular", m=3, window=window, stop="x0", **base),
        "warm": SolverSettings(method="triangular", m=3, window=window, stop="x0", warm_start=max(T // 5, 1), **base),
        "taa_window8": SolverSettings(method="triangular", m=3, window=8, stop="x0", max_iter=0, row_tol=1e-2,
                                      x0_tol=2e-3),
        "default": DEFAULT,
    }
    if name not in table:
        raise SystemExit(f"error: unknown solver {name!r}; expected some of {', '.join(table)}")
    return table[name]


def psnr(x: np.ndarray, ref: np.ndarray) -> float:
    """PSNR (dB) of [-1, 1] images, clipped, on [0, 1] (the protocol of benchmarks/quality.py)."""
    a = np.clip((np.asarray(x, np.float64) + 1) / 2, 0, 1)
    b = (np.asarray(ref, np.float64) + 1) / 2
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def time_call(fn, *args, repeats: int = 2) -> tuple[object, float, float]:
    """(output, compile s, best run s) of a jitted fn (compile s is 0 when it was compiled before)."""
    start = time.perf_counter()
    compiled = _COMPILED.get(id(fn))
    if compiled is None:
        compiled = _COMPILED[id(fn)] = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return out, compile_s, best


def batch_timings(model, params, size: int, sizes: list[int]) -> dict[int, float]:
    """Seconds of one batched eps call per batch size (compiled, best of 3)."""
    out = {}
    for b in sizes:
        apply = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))  # one compiled program per size
        x = jax.random.normal(jax.random.PRNGKey(b), (b, size, size, 3), jnp.float32)
        t = jnp.linspace(0, 999, b).astype(jnp.int32)
        _, _, best = time_call(apply, params, x, t, repeats=3)
        out[b] = best
        print(f"eps call, batch {b:4d}: {best * 1e3:8.1f} ms ({best / b * 1e3:6.1f} ms per image)", flush=True)
    return out


def call_time(timings: dict[int, float], rows: int) -> float:
    """Batched-call time for ``rows`` rows, interpolated (linearly) between the measured sizes."""
    sizes = sorted(timings)
    return float(np.interp(rows, sizes, [timings[s] for s in sizes]))


def rounds_within(trace_psnr: list[float], seq_psnr: float, warm: int) -> int | None:
    """First round (1-based, warm start included) from which x0 stays within AGREE_DB of the chain."""
    ok = [np.isfinite(p) and abs(p - seq_psnr) <= AGREE_DB for p in trace_psnr]
    for i in range(len(ok)):
        if i >= warm - 1 and all(ok[i:]) and ok[i]:
            return i + 1
    return None


_COMPILED: dict = {}
_JITTED: dict = {}  # (task, T, solver) -> jitted solve (the operator is an argument: one compile per task)


def run_problem(model, params, task: str, photo: str, index: int, T: int, solvers: list[str],
                timings: dict[int, float]) -> list[dict]:
    cfg = load_config_file(REPO / "configs/deqir" / TASKS[task], "embedded")
    size = int(cfg.image_size)
    op = build_operator(cfg, (size, size))
    x = prepare_image(photos.read(photo), size, cfg.resize)
    y = op.A(jnp.asarray(x))
    key_xt, key_z, _ = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), index), 3)
    x_T = jax.random.normal(key_xt, x.shape, jnp.float32)
    z = jax.random.normal(key_z, x.shape, jnp.float32)
    t, at, at_next = chain_schedule(T)
    nw, etw = float(cfg.nw), float(cfg.etw)
    eps_of = lambda p: (lambda xx, tt: model.apply({"params": p}, xx, tt))  # noqa: E731
    base = {"photo": photo, "task": task, "T": T, "size": size}

    key = (task, T, "sequential")
    if key not in _JITTED:
        _JITTED[key] = jax.jit(lambda p, op, y, x_T, z: sequential.sequential_sample(
            eps_of(p), op, x_T, y, z, t, at, at_next, nw=nw, etw=etw).x0)
    seq_x0, compile_s, run_s = time_call(_JITTED[key], params, op, y, x_T, z, repeats=1)
    seq_x0 = np.asarray(seq_x0)
    seq_psnr = psnr(seq_x0, x)
    seq_proj = T * call_time(timings, 1)
    rows = [{**base, "solver": "sequential", "rounds": T, "image_evals": T, "wall_s": run_s, "compile_s": compile_s,
             "psnr": seq_psnr, "dpsnr": 0.0, "max_abs_dx0": 0.0, "status": "converged", "rounds_0.05dB": T,
             "projected_s": seq_proj, "trace_dpsnr": []}]
    print(_line(rows[-1]), flush=True)
    for name in solvers:
        settings = solver_settings(name, T)
        key = (task, T, name)
        if key not in _JITTED:
            _JITTED[key] = jax.jit(lambda p, op, y, x_T, z, s=settings: fp.solve_parallel(
                eps_of(p), op, fp.make_coefficients(op, x_T, y, z, t, at, at_next, nw=nw, etw=etw), s, trace=True))
        res, compile_s, run_s = time_call(_JITTED[key], params, op, y, x_T, z, repeats=1)
        x0 = np.asarray(res.solution[-1:])
        n = int(res.n_evals)
        trace = [psnr(v[None], x) if np.all(np.isfinite(v)) else float("nan") for v in np.asarray(res.x0_trace)[:n]]
        W = settings.window_rows(T) if settings.method != "anderson" else T
        value = psnr(x0, x)
        rows.append({**base, "solver": name, "settings": dataclasses.asdict(settings), "rounds": n,
                     "image_evals": int(res.image_evals), "wall_s": run_s, "compile_s": compile_s, "psnr": value,
                     "dpsnr": value - seq_psnr, "max_abs_dx0": float(np.max(np.abs(x0 - seq_x0))),
                     "status": anderson.STATUS_NAMES[int(res.status)],
                     "rounds_0.05dB": rounds_within(trace, seq_psnr, settings.warm_start),
                     "projected_s": settings.warm_start * call_time(timings, 1)
                     + (n - settings.warm_start) * call_time(timings, W),
                     "trace_dpsnr": [p - seq_psnr if np.isfinite(p) else None for p in trace]})
        print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    return (f"T {r['T']:3d} {r['photo']:>8} {r['task']:>12} {r['solver']:>10}: rounds {r['rounds']:3d} "
            f"evals {r['image_evals']:5d} wall {r['wall_s']:7.2f} s PSNR {r['psnr']:6.2f} dPSNR {r['dpsnr']:+.3f} "
            f"max|dx0| {r['max_abs_dx0']:.3f} {r['status']} within-0.05dB@{r['rounds_0.05dB']}")


def summarise(rows: list[dict]) -> list[dict]:
    """Mean / worst over photos and tasks per (T, solver)."""
    out = []
    order = ["sequential", "default", "picard", "anderson", "taa", "window", "taa_window", "taa_window8", "warm"]
    keys = sorted({(r["T"], r["solver"]) for r in rows},
                  key=lambda k: (k[0], order.index(k[1]) if k[1] in order else len(order), k[1]))
    for T, solver in keys:
        rs = [r for r in rows if r["T"] == T and r["solver"] == solver]
        within = [r["rounds_0.05dB"] for r in rs]
        out.append({
            "T": T, "solver": solver, "problems": len(rs),
            "rounds_mean": float(np.mean([r["rounds"] for r in rs])),
            "image_evals_mean": float(np.mean([r["image_evals"] for r in rs])),
            "evals_per_sequential": float(np.mean([r["image_evals"] for r in rs])) / T,
            "wall_s_mean": float(np.mean([r["wall_s"] for r in rs])),
            "projected_s_mean": float(np.mean([r["projected_s"] for r in rs])),
            "dpsnr_mean": float(np.mean([r["dpsnr"] for r in rs])),
            "dpsnr_worst": float(np.min([r["dpsnr"] for r in rs])),
            "max_abs_dx0_worst": float(np.max([r["max_abs_dx0"] for r in rs])),
            "rounds_0.05dB_mean": float(np.mean(reached)) if (reached := [w for w in within if w is not None]) else None,
            "never_within": sum(w is None for w in within),
            "final_within_0.05dB": sum(abs(r["dpsnr"]) <= AGREE_DB for r in rs),
            "converged": sum(r["status"] == "converged" for r in rs),
        })
    return out


def print_table(summary: list[dict]) -> None:
    head = ("T", "solver", "rounds", "rounds to 0.05 dB (reached)", "image evals (x seq)", "dPSNR mean / worst",
            "final within 0.05 dB", "max|dx0|", "CPU wall s", "projected s", "converged")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for s in summary:
        n, reached = s["problems"], s["problems"] - s["never_within"]
        within = "never" if s["rounds_0.05dB_mean"] is None else f"{s['rounds_0.05dB_mean']:.1f} ({reached}/{n})"
        cells = (str(s["T"]), s["solver"], f"{s['rounds_mean']:.1f}", within,
                 f"{s['image_evals_mean']:.0f} ({s['evals_per_sequential']:.1f}x)",
                 f"{s['dpsnr_mean']:+.3f} / {s['dpsnr_worst']:+.3f}", f"{s['final_within_0.05dB']}/{n}",
                 f"{s['max_abs_dx0_worst']:.3f}",
                 f"{s['wall_s_mean']:.1f}", f"{s['projected_s_mean']:.2f}", f"{s['converged']}/{s['problems']}")
        print("| " + " | ".join(cells) + " |")


def plot(rows: list[dict], path: pathlib.Path) -> None:
    """Mean |delta PSNR| against rounds per solver and T (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ts = sorted({r["T"] for r in rows})
    fig, axes = plt.subplots(1, len(Ts), figsize=(5.5 * len(Ts), 4), dpi=100, squeeze=False)
    for ax, T in zip(axes[0], Ts):
        for solver in sorted({r["solver"] for r in rows if r["T"] == T and r["solver"] != "sequential"}):
            traces = [r["trace_dpsnr"] for r in rows if r["T"] == T and r["solver"] == solver and r["trace_dpsnr"]]
            if not traces:
                continue
            n = max(len(tr) for tr in traces)
            # a solve that stopped keeps its final value for the later rounds
            grid = np.array([[np.nan if v is None else abs(v) for v in tr] + [abs(tr[-1] or 0.0)] * (n - len(tr))
                             for tr in traces], float)
            with np.errstate(all="ignore"):
                mean = np.array([np.nanmean(col) if np.any(np.isfinite(col)) else np.nan for col in grid.T])
            ax.semilogy(np.arange(1, n + 1), np.maximum(mean, 1e-4), "o-", ms=3, label=solver)
        ax.axhline(AGREE_DB, color="k", lw=0.8, ls="--")
        ax.axvline(T, color="gray", lw=0.8, ls=":")
        ax.set_title(f"T = {T} (dotted: sequential chain's {T} rounds)", fontsize=9)
        ax.set_xlabel("rounds (sequential network calls)")
        ax.set_ylabel("mean |PSNR - sequential PSNR| (dB)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def write_results(out: pathlib.Path, png: pathlib.Path, rows: list[dict], extra: dict) -> None:
    summary = summarise(rows)
    print()
    print_table(summary)
    files.write_json(out, {**extra, "agree_db": AGREE_DB, "summary": summary, "rows": rows}, indent=1)
    plot(rows, png)
    print(f"wrote {out} and {png}")


def merge(files: list[str], out: pathlib.Path, png: pathlib.Path) -> None:
    """Rows of several result files in one table (a later file's row replaces an earlier one's)."""
    rows, extra = {}, {"merged_from": files, "eps_call_s": {}}
    for name in files:
        data = json.loads(pathlib.Path(name).read_text())
        for key in ("device", "backend", "default_settings"):
            extra[key] = data.get(key, extra.get(key))
        extra["eps_call_s"].update(data.get("eps_call_s", {}))
        for r in data["rows"]:
            rows[(r["T"], r["photo"], r["task"], r["solver"])] = r
    write_results(out, png, list(rows.values()), extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", default="25,50,100")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--photos", default=",".join(photos.HELDOUT))
    parser.add_argument("--solvers", default="picard,anderson,taa,window,taa_window,warm,default",
                        help="comma list; 'T:solvers' entries after ';' override per T, e.g. "
                             "'picard,anderson;100:window,default'")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,25,50,100")
    parser.add_argument("--out", default="benchmarks/results/deqir_solvers.json")
    parser.add_argument("--png", default="benchmarks/results/deqir_solvers.png")
    parser.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                        help="no runs: combine the rows of earlier result files (later files win for the same "
                             "T / photo / task / solver), then summarise, plot and write --out")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, pathlib.Path(args.out), pathlib.Path(args.png))
        return
    Ts = [int(v) for v in args.timesteps.split(",") if v]
    tasks = [v for v in args.tasks.split(",") if v]
    names = [v for v in args.photos.split(",") if v]
    for v in tasks:
        if v not in TASKS:
            raise SystemExit(f"error: unknown task {v!r}; expected some of {', '.join(TASKS)}")
    for v in names:
        if v not in photos.HELDOUT:
            raise SystemExit(f"error: {v!r} is not a held-out photo ({', '.join(photos.HELDOUT)})")
    default_solvers, per_T = args.solvers.split(";")[0], {}
    for part in args.solvers.split(";")[1:]:
        T_str, _, lst = part.partition(":")
        per_T[int(T_str)] = [v for v in lst.split(",") if v]
    solvers_of = lambda T: per_T.get(T, [v for v in default_solvers.split(",") if v])  # noqa: E731
    for T in Ts:
        for s in solvers_of(T):
            solver_settings(s, T)

    cfg = load_config_file(REPO / "configs/deqir" / TASKS[tasks[0]], "embedded")
    model = models.model_from_config(cfg.model)
    params = checkpoints.restore_params(cfg.checkpoint)
    sizes = [b for b in (int(v) for v in args.batch_sizes.split(",") if v) if b <= max(Ts)]
    timings = batch_timings(model, params, int(cfg.image_size), sizes)
    rows = []
    for T in Ts:
        for task in tasks:
            for index, photo in enumerate(names):
                rows += run_problem(model, params, task, photo, photos.HELDOUT.index(photo), T, solvers_of(T), timings)
    write_results(pathlib.Path(args.out), pathlib.Path(args.png), rows,
                  {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
                   "default_settings": dataclasses.asdict(DEFAULT),
                   "eps_call_s": {str(k): v for k, v in timings.items()}})


if __name__ == "__main__":
    main()
