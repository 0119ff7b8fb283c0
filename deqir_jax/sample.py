"""Restore images with DeqIR: ``python -m deqir_jax.sample --config configs/deqir/<task>.py [--config.x=y]``.

    python -m deqir_jax.sample      # the embedded default: bicubic SR x4 of a bundled held-out photo, 64x64
    python -m deqir_jax.sample --config configs/deqir/sr_x4.py \
        --config.checkpoint=checkpoints/imagenet256_uncond --config.input=photos/ --config.output=out/

With no ``--config`` the preset is :data:`DEFAULT_CONFIG` (``configs/deqir/sr_bicubic_x4.py:embedded``, the
degradation of the ResShift default too: the small prior
this project trained and ships, restoring the bundled held-out photo of :mod:`ircore.photos`).

For every image (one file or every image of a folder) it synthesises the measurement y = A x (+ noise)
from the clean image, or takes y as given (``--config.input_is_measurement``), runs the parallel
fixed-point solver (or ``--config.sampler=sequential``) and writes, into ``<output>/<image name>/``,
the files of :mod:`deqir_jax.results` (``restored.png``, ``measurement.png``, ``reference.png``,
``side_by_side.png``, ``metrics.json``: PSNR/SSIM (and LPIPS with the ``lpips`` extra) against the reference,
also of the A^+ y baseline, iterations, residual history, NFE, wall time; ``convergence.png``). Compiled
programs are kept in JAX's persistent cache (``--config.compilation_cache``: ``auto`` = a per-user folder, a
path, or ``off``), so a second run skips compilation. ``output`` empty (the default) means a fresh
``outputs/deqir/run-<date>-<time>`` folder (removed again if the run writes nothing).

An image's folder appears only when complete: its files are written into a hidden ``.<name>.partial-<hex>``
folder renamed into place at the end, and Ctrl-C is held back for that rename (exit 130 with one line saying
how many images finished). A folder run into an existing ``output`` skips finished images (a folder with
``metrics.json``) and redoes unfinished ones, so an interrupted run continues where it stopped; a single image
whose results exist is refused. ``--config.overwrite=True`` redoes them, swapping a finished folder out only
once the new one is complete; a result folder holding files this program did not write is refused, never
deleted. Every check that can fail (config values, inputs, output folder, checkpoint) runs before the
compute and is one line on stderr, exit 1. :func:`restore_images` is the same from Python.

The steps: :func:`set_up` (prior, mesh, jitted restore function, operator, PRNG key: once per run), then per
image :func:`restore_file` (:func:`measure` -> :func:`optimise_x_T` -> solve -> score) and
:func:`deqir_jax.results.write_result`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import pathlib
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from deqir_jax import anderson, models, presets
from deqir_jax import operators as ops
from deqir_jax.restore import ChainSettings, RestoreOutput, make_init_opt_fn, make_restore_fn
from deqir_jax.results import ImageResult, folder_state, foreign_message, write_result, clean_staging
from ircore import compile_cache, compiling, images, mesh, scoring

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "deqir" / "sr_bicubic_x4.py"
DEFAULT_CONFIG_ARG = "embedded"
DEFAULT_OUTPUT_PARENT = pathlib.Path("outputs") / "deqir"
INIT_OPT_LOSSES = ("measurement", "reference", "oracle")
SSIM_MIN_SIZE = 11  # dm-pix SSIM's 11x11 window (ircore.metrics.ssim)


class Interrupted(Exception):
    """Ctrl-C during a run: the message says how far it got and where the finished results are."""


# ------------------------------------------------------------------------------------------ inputs
def list_inputs(cfg: ml_collections.ConfigDict) -> list[pathlib.Path]:
    """The image files of ``cfg.input`` (one image or a folder); one-line errors when there are none."""
    if not cfg.input:
        raise ValueError("no input given: set --config.input=IMAGE_OR_FOLDER")
    src = pathlib.Path(cfg.input)
    if not src.exists():
        raise FileNotFoundError(f"input {src} does not exist{_did_you_mean(src)}; check --config.input")
    return images.list_images(src) if src.is_dir() else [src]


def _did_you_mean(path: pathlib.Path) -> str:
    """`` (did you mean X?)`` for the closest existing name beside a missing ``path`` ('' when none is close)."""
    parent = path.parent if str(path.parent) else pathlib.Path(".")
    try:
        names = [p.name for p in parent.iterdir()] if parent.is_dir() else []
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.75)
    return f" (did you mean {parent / close[0]}?)" if close else ""


def check_distinct_names(files: Sequence[pathlib.Path], output: str) -> None:
    """ValueError (one line naming both files) when two inputs would write to the same ``<output>/<stem>/``
    (``photo.png`` and ``photo.jpg``; compared ignoring case, as on macOS / Windows file systems)."""
    seen: dict[str, pathlib.Path] = {}
    where = pathlib.Path(output) if output else pathlib.Path("<run folder>")
    for file in files:
        key = file.stem.casefold()
        if key in seen:
            raise ValueError(f"{seen[key]} and {file} would both write to {where / file.stem}/; rename one of "
                             f"them or restore them in separate runs")
        seen[key] = file


def check_output_writable(output: pathlib.Path) -> None:
    """ValueError (one line) unless ``output`` is a folder, or can be made one, that this process can write."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {output} is a file; give a folder with --config.output=DIR")
    base = output
    while not base.exists():
        if base.parent == base:
            break
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"output {output} cannot be created: {base} is a file; choose another --config.output")
    stat = base.stat()
    try:  # a real probe: permission bits say nothing for root or on read-only file systems
        probe = pathlib.Path(tempfile.mkdtemp(prefix=".deqir-write-check-", dir=base))
    except OSError as err:
        raise ValueError(f"cannot write to {base} ({err.strerror or err}); choose another --config.output") from None
    probe.rmdir()
    with contextlib.suppress(OSError):  # leave the folder's time stamps as they were
        os.utime(base, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def prepare_image(img: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(1, h, w, 3) -> (1, size, size, 3). ``center_crop``: resize the short side to ``size`` (bicubic) and
    crop the centre (the DDNM/DeqIR ImageNet loader); ``none``: the image must already be size x size."""
    _, h, w, _ = img.shape
    if (h, w) == (size, size):
        return img
    if mode == "none":
        raise ValueError(f"image is {h}x{w} but the model needs {size}x{size} (set resize=center_crop)")
    if mode != "center_crop":
        raise ValueError(f"unknown resize mode {mode!r}; expected 'center_crop' or 'none'")
    scale = size / min(h, w)
    nh, nw_ = max(size, round(h * scale)), max(size, round(w * scale))
    u8 = images.to_uint8(img[0])
    resized = np.asarray(Image.fromarray(u8).resize((nw_, nh), Image.BICUBIC), np.float32) / 127.5 - 1.0
    top, left = (nh - size) // 2, (nw_ - size) // 2
    return resized[None, top : top + size, left : left + size]


def _in_file(file: Any, check: Callable[[], Any]) -> Any:
    """``check()``, its ValueError prefixed with the file it concerns (when the message lacks it)."""
    try:
        return check()
    except ValueError as err:
        message = " ".join(str(err).split())
        raise ValueError(message if str(file) in message else f"{file}: {message}") from None


def check_inputs(cfg: ml_collections.ConfigDict, op: ops.LinearOperator, files: Sequence[pathlib.Path]) -> None:
    """Everything about the inputs that could fail an image, checked before the slow set-up and compute: each
    file is readable and fits the operator / ``--config.resize``, the reference images are readable and of the
    model's size, and images that will be scored are large enough for SSIM. One-line ValueError naming the file."""
    size = int(cfg.image_size)
    scored = not cfg.input_is_measurement or bool(cfg.reference)
    if scored and size < SSIM_MIN_SIZE:
        raise ValueError(f"--config.image_size={size} is smaller than SSIM's {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} window "
                         f"(results are scored against the reference); use an image_size >= {SSIM_MIN_SIZE}")
    if cfg.input_is_measurement and cfg.reference:
        _in_file(cfg.reference, lambda: prepare_image(images.read_image(cfg.reference), size, "none"))
    loss = cfg.init_opt.loss
    if int(cfg.init_opt.steps) > 0:
        if loss not in INIT_OPT_LOSSES:
            raise ValueError(f"--config.init_opt.loss must be one of {', '.join(INIT_OPT_LOSSES)}, got {loss!r}")
        if loss == "reference":
            if not cfg.init_opt.reference:
                raise ValueError("--config.init_opt.loss=reference needs --config.init_opt.reference=IMAGE")
            _in_file(cfg.init_opt.reference,
                     lambda: prepare_image(images.read_image(cfg.init_opt.reference), size, cfg.resize))
        if loss == "oracle" and not scored:
            raise ValueError("--config.init_opt.loss=oracle needs the ground truth: a clean input or "
                             "--config.reference=IMAGE")
    for file in files:
        img = images.read_image(file)
        if cfg.input_is_measurement:
            _in_file(file, lambda: op.measurement_from_image(img))
        else:
            _in_file(file, lambda: prepare_image(img, size, cfg.resize))


# ------------------------------------------------------------------------------------------ once per run
class RunSetup(NamedTuple):
    """What a run builds once: its preset, chain settings, operator, prior weights (a copy on every device
    for the parallel sampler), jitted ``restore_fn(params, op, y, x_T, z)``, jitted x_T optimisation
    ``init_opt_fn(params, op, y, x_T, z, target)`` (None when off), PRNG key (from ``cfg.seed``) and the
    scorer (PSNR / SSIM, LPIPS with the ``lpips`` extra and ``cfg.score_lpips``)."""

    cfg: ml_collections.ConfigDict
    settings: ChainSettings
    op: ops.LinearOperator
    params: Any
    restore_fn: Callable[..., RestoreOutput]
    init_opt_fn: Callable[..., Any] | None
    key: jax.Array
    scorer: scoring.Scorer

    @property
    def size(self) -> int:
        return int(self.cfg.image_size)


def set_up(cfg: ml_collections.ConfigDict, params: Any | None = None) -> RunSetup:
    """Loads the prior (unless ``params`` is given) and builds everything a run reuses for every image."""
    params = presets.load_params(cfg) if params is None else params
    model = models.model_from_config(cfg.model)
    settings = presets.chain_settings_from_config(cfg)
    sharding = None
    if settings.sampler == "parallel":
        device_mesh = mesh.make_mesh()
        sharding = mesh.time_sharding(device_mesh)
        # Every device runs the prior on its share of the chain: keep a copy of the weights on each.
        params = jax.device_put(params, mesh.replicated(device_mesh))
    restore_fn = make_restore_fn(model, settings, sharding=sharding)
    init_opt_fn = None
    if int(cfg.init_opt.steps) > 0:
        init_opt_fn = make_init_opt_fn(model, settings, presets.init_opt_from_config(cfg), cfg.init_opt.loss,
                                       sharding=sharding)
    size = int(cfg.image_size)
    op = presets.build_operator(cfg, (size, size))
    return RunSetup(cfg, settings, op, params, restore_fn, init_opt_fn, jax.random.PRNGKey(int(cfg.seed)),
                    scoring.Scorer(use_lpips=bool(cfg.get("score_lpips", True))))


# ------------------------------------------------------------------------------------------ once per image
class RestorationInputs(NamedTuple):
    """What restoring one image starts from: y (1, *op.y_shape) (noise included), x_T and z (1, H, W, 3) the
    initial and the fixed noise image, reference (1, H, W, 3) in [-1, 1] or None."""

    y: jax.Array
    x_T: jax.Array
    z: jax.Array
    reference: np.ndarray | None


def measure(run: RunSetup, file: pathlib.Path, index: int) -> RestorationInputs:
    """Reads image ``index`` of the run and makes its measurement (or takes the file as the measurement)."""
    cfg, size = run.cfg, run.size
    img = images.read_image(file)
    key_xt, key_z, key_y = jax.random.split(jax.random.fold_in(run.key, index), 3)
    if cfg.input_is_measurement:
        y = run.op.measurement_from_image(img)
        reference = prepare_image(images.read_image(cfg.reference), size, "none") if cfg.reference else None
    else:
        reference = prepare_image(img, size, cfg.resize)
        y = run.op.A(jnp.asarray(reference))
    if cfg.sigma_y > 0:
        y = y + float(cfg.sigma_y) * jax.random.normal(key_y, y.shape, y.dtype)
    x_T = jax.random.normal(key_xt, (1, size, size, 3), jnp.float32)
    z = jax.random.normal(key_z, (1, size, size, 3), jnp.float32)
    return RestorationInputs(y=y, x_T=x_T, z=z, reference=reference)


def init_opt_target(cfg: ml_collections.ConfigDict, reference: np.ndarray | None, size: int) -> jax.Array:
    """The image (1, size, size, 3) the x_T loss compares with (zeros for the measurement loss, which ignores it)."""
    loss = cfg.init_opt.loss
    if loss == "measurement":
        return jnp.zeros((1, size, size, 3), jnp.float32)
    if loss == "reference":
        if not cfg.init_opt.reference:
            raise ValueError("init_opt.loss=reference needs --config.init_opt.reference=IMAGE")
        return jnp.asarray(prepare_image(images.read_image(cfg.init_opt.reference), size, cfg.resize))
    if loss == "oracle":
        if reference is None:
            raise ValueError("init_opt.loss=oracle needs the ground truth (a clean input or --config.reference)")
        return jnp.asarray(reference)
    raise ValueError(f"unknown init_opt.loss {loss!r}; expected measurement, reference or oracle")


def optimise_x_T(run: RunSetup, inputs: RestorationInputs) -> tuple[jax.Array, dict]:
    """x_T after the optional x_T optimisation, and the record entry describing it ({} when off)."""
    if run.init_opt_fn is None:
        return inputs.x_T, {}
    target = init_opt_target(run.cfg, inputs.reference, run.size)
    opt = jax.block_until_ready(run.init_opt_fn(run.params, run.op, inputs.y, inputs.x_T, inputs.z, target))
    n_opt = int(opt.n_epochs)
    c = run.cfg.init_opt
    return opt.best_x_T, {"init_opt": {"loss": c.loss, "gradient": c.gradient, "epochs": n_opt,
                                       "best_loss": float(opt.best_loss),
                                       "losses": [float(v) for v in np.asarray(opt.losses)[:n_opt]]}}


def solve_record(settings: ChainSettings, out: RestoreOutput) -> dict:
    """The record fields of a solve: sampler, solver, map evaluations, NFE, status, residual history."""
    parallel = settings.sampler == "parallel"
    n_evals = int(out.n_evals)
    return {
        "sampler": settings.sampler,
        "solver": settings.solver.method if parallel else None,
        "solver_settings": dataclasses.asdict(settings.solver) if parallel else None,
        "timesteps": settings.timesteps,
        "map_evaluations": n_evals,  # sequential rounds of network calls (warm start included)
        "nfe": int(out.image_evals),  # single-image network evaluations in all
        "status": anderson.STATUS_NAMES[int(out.status)],
        "residual_history": [float(r) if np.isfinite(r) else None for r in np.asarray(out.residuals)[:n_evals]]
        if parallel else [],
    }


def restore_file(run: RunSetup, file: pathlib.Path, index: int, folder: pathlib.Path) -> ImageResult:
    """Measure -> (x_T optimisation) -> restore -> score one image; ``folder`` is where its results will go."""
    inputs = measure(run, file, index)
    start = time.perf_counter()
    x_T, opt_record = optimise_x_T(run, inputs)
    out = jax.block_until_ready(run.restore_fn(run.params, run.op, inputs.y, x_T, inputs.z))
    wall = time.perf_counter() - start
    anderson.check_result(out)  # one-line SolverDivergedError on NaN / divergence
    restored = np.asarray(out.x0)
    baseline = np.asarray(run.op.A_pinv(inputs.y)).reshape(restored.shape)  # A^+ y: the DDNM range-space part
    scored = {}
    if inputs.reference is not None:
        scored = {**run.scorer(restored, inputs.reference),
                  "baseline": {"name": "A+y", **run.scorer(baseline, inputs.reference)}}
    record = {
        "image": str(file),
        "task": run.cfg.degradation.name,
        **solve_record(run.settings, out),
        "wall_time_s": wall,
        "consistency_l2": float(jnp.sqrt(jnp.sum((run.op.A(out.x0) - inputs.y) ** 2))),
        "sigma_y": float(run.cfg.sigma_y),
        "image_size": run.size,
        "folder": str(folder.resolve()),
        "side_by_side": ["degraded", "A+y", "restored"] + (["reference"] if inputs.reference is not None else []),
        **opt_record,
        **scored,
    }
    parallel = run.settings.sampler == "parallel"
    return ImageResult(
        record=record, restored=restored, measurement=run.op.measurement_image(inputs.y), baseline=baseline,
        reference=inputs.reference, residuals=np.asarray(out.residuals) if parallel else None,
        title=f"{file.name}: {run.settings.solver.method}, T={run.settings.timesteps}",
    )


# ------------------------------------------------------------------------------------------ the loop
class Plan(NamedTuple):
    """Which images a run restores: ``todo`` (index among all inputs, file) and the ``skipped`` finished ones."""

    todo: list[tuple[int, pathlib.Path]]
    skipped: list[pathlib.Path]


def plan_images(files: Sequence[pathlib.Path], output: str, overwrite: bool, single: bool) -> Plan:
    """Splits the inputs into images to restore and finished ones to skip (a folder with ``metrics.json``; redone
    with ``overwrite``). One line (FileExistsError) for a result folder holding files we did not write, and for
    a single-image run whose result exists without ``overwrite`` (as the ResShift CLI)."""
    if not output:  # a fresh run folder: nothing there yet
        return Plan(list(enumerate(files)), [])
    todo, skipped = [], []
    for index, file in enumerate(files):
        folder = pathlib.Path(output) / file.stem
        state = folder_state(folder)
        if state.finished and not overwrite:
            if single:
                raise FileExistsError(f"{folder} already holds the results of {file.name}; pass "
                                      f"--config.overwrite=True to redo them")
            skipped.append(file)
        elif state.foreign:
            raise FileExistsError(foreign_message(folder, state.foreign))
        else:
            todo.append((index, file))
    return Plan(todo, skipped)


@contextlib.contextmanager
def run_folder(output: str) -> Iterator[pathlib.Path]:
    """The run's output folder: ``output``, or a fresh ``outputs/deqir/run-<date>-<time>``. Folders this creates
    are removed again at the end if they are still empty (a run that wrote nothing leaves nothing)."""
    created, probe = [], pathlib.Path(output) if output else DEFAULT_OUTPUT_PARENT
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    root = pathlib.Path(output) if output else images.fresh_folder(DEFAULT_OUTPUT_PARENT)
    created += [] if output else [root]
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    finally:
        for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Holds Ctrl-C (SIGINT) back until the block is done, then delivers it to the previous handler (the default
    one raises KeyboardInterrupt). Outside the main thread (where signals cannot be handled) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


def restore_images(cfg: ml_collections.ConfigDict, params: Any | None = None, *, progress: bool = True,
                   log: Callable[[str], Any] = print) -> list[dict]:
    """Runs the preset on every input image not finished yet; returns the record of each (also written to
    disk, one folder per image, atomically). Every check that can fail runs before the set-up and compute.
    Ctrl-C raises :class:`Interrupted` (finished images are kept; a rerun continues)."""
    presets.check_config(cfg)
    files = list_inputs(cfg)
    check_distinct_names(files, cfg.output)
    check_output_writable(pathlib.Path(cfg.output) if cfg.output else DEFAULT_OUTPUT_PARENT)
    single = not pathlib.Path(cfg.input).is_dir()
    plan = plan_images(files, cfg.output, bool(cfg.overwrite), single)
    if plan.skipped:
        log(f"skipped {len(plan.skipped)} finished image(s) (pass --config.overwrite=True to redo them)")
    if not plan.todo:
        return []
    size = int(cfg.image_size)
    check_inputs(cfg, presets.build_operator(cfg, (size, size)), [file for _, file in plan.todo])
    run = set_up(cfg, params)
    records: list[dict] = []
    with run_folder(cfg.output) as out_root:
        clean_staging(out_root, [file.stem for _, file in plan.todo])
        try:
            for index, file in tqdm(plan.todo, desc="deqir", unit="img", disable=not progress):
                folder = out_root / file.stem
                result = restore_file(run, file, index, folder)
                with sigint_deferred():  # an image's folder is renamed into place and counted, or neither
                    write_result(folder, result)
                    records.append(result.record)
        except KeyboardInterrupt:
            kept = (f"finished results are in {out_root}; rerun with --config.output={out_root} to continue"
                    if records or plan.skipped else "nothing was written")
            raise Interrupted(f"interrupted after {len(records)} of {len(plan.todo)} image(s); {kept}") from None
    return records


def main(argv: list[str] | None = None) -> None:
    from absl import app, flags

    from ircore import config_cli  # noqa: PLC0415 - CLI only

    argv = sys.argv if argv is None else argv
    compiling.tune_cpu_xla_flags()  # before JAX starts: the measured-faster XLA:CPU setting (ircore.compiling)
    default = f"{DEFAULT_CONFIG}:{DEFAULT_CONFIG_ARG}" if DEFAULT_CONFIG.is_file() else None
    config_cli.define_config_flag("deqir_jax.sample", default=default, argv=argv,
                                  help_string="restoration preset: a name (sr_x4, sr_x4:embedded, deblur_gauss:celeba; "
                                  "configs/deqir/<task>.py[:imagenet|celeba|embedded]) or a config file path; "
                                  "default: the embedded SR x4 preset")

    def run(_):
        from absl import logging  # noqa: PLC0415

        if not flags.FLAGS["verbosity"].present:  # orbax and matplotlib log at INFO
            logging.set_verbosity(logging.WARNING)
        cfg = flags.FLAGS.config
        if cfg is None:
            raise app.UsageError(f"no --config given and the default preset {DEFAULT_CONFIG} is not here (the "
                                 "package was installed without its repository): pass --config "
                                 "configs/deqir/<task>.py")
        try:
            compile_cache.enable(cfg.get("compilation_cache", "auto"))
            records = restore_images(cfg)
        except Interrupted as err:
            print(f"deqir_jax.sample: {err}", file=sys.stderr)
            sys.exit(130)
        except KeyboardInterrupt:
            print("deqir_jax.sample: interrupted before any image was restored; nothing was written", file=sys.stderr)
            sys.exit(130)
        except (ValueError, OSError, anderson.SolverDivergedError) as err:
            print(f"deqir_jax.sample: error: {' '.join(str(err).split())}", file=sys.stderr)
            sys.exit(1)
        for r in records:
            quality = f" PSNR {r['psnr']:.2f} dB SSIM {r['ssim']:.4f}" if "psnr" in r else ""
            quality += f" LPIPS {r['lpips']:.4f}" if r.get("lpips") is not None else ""
            print(f"{r['image']}: {r['status']} after {r['map_evaluations']} evaluations "
                  f"(NFE {r['nfe']}), {r['wall_time_s']:.1f} s{quality}")
        for folder in dict.fromkeys(r["folder"] for r in records):
            print(f"results in {folder}")
        if cfg.get("score_lpips", True) and any("psnr" in r and r.get("lpips") is None for r in records):
            print("LPIPS not measured: install the lpips extra (pip install '.[lpips]')")

    app.run(run, argv=argv, flags_parser=config_cli.flags_parser("deqir_jax.sample"))


if __name__ == "__main__":
    main()
