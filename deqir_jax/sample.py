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
``outputs/deqir/run-<date>-<time>`` folder; existing results are never overwritten unless
``--config.overwrite``. :func:`restore_images` is the same from Python.

The steps: :func:`set_up` (prior, mesh, jitted restore function, operator, PRNG key: once per run), then per
image :func:`restore_file` (:func:`measure` -> :func:`optimise_x_T` -> solve -> score) and
:func:`deqir_jax.results.write_result`.
"""
from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from deqir_jax import anderson, models, presets
from deqir_jax import operators as ops
from deqir_jax.restore import ChainSettings, RestoreOutput, make_init_opt_fn, make_restore_fn
from deqir_jax.results import ImageResult, check_outputs_free, write_result
from ircore import compile_cache, images, mesh, scoring

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "deqir" / "sr_bicubic_x4.py"
DEFAULT_CONFIG_ARG = "embedded"
DEFAULT_OUTPUT_PARENT = pathlib.Path("outputs") / "deqir"


# ------------------------------------------------------------------------------------------ inputs
def list_inputs(cfg: ml_collections.ConfigDict) -> list[pathlib.Path]:
    """The image files of ``cfg.input`` (one image or a folder); one-line errors when there are none."""
    if not cfg.input:
        raise ValueError("no input given: set --config.input=IMAGE_OR_FOLDER")
    src = pathlib.Path(cfg.input)
    if not src.exists():
        raise FileNotFoundError(f"input {src} does not exist")
    return images.list_images(src) if src.is_dir() else [src]


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
def restore_images(cfg: ml_collections.ConfigDict, params: Any | None = None, *, progress: bool = True) -> list[dict]:
    """Runs the preset on every input image; returns the record of each (also written to disk)."""
    files = list_inputs(cfg)
    check_outputs_free(cfg.output, [file.stem for file in files], bool(cfg.overwrite))
    run = set_up(cfg, params)
    # A fresh run folder only once the set-up has worked (a failed start leaves nothing behind).
    out_root = pathlib.Path(cfg.output) if cfg.output else images.fresh_folder(DEFAULT_OUTPUT_PARENT)
    records = []
    for index, file in enumerate(tqdm(files, desc="deqir", unit="img", disable=not progress)):
        folder = out_root / file.stem
        result = restore_file(run, file, index, folder)
        write_result(folder, result)
        records.append(result.record)
    return records


def main(argv: list[str] | None = None) -> None:
    from absl import app, flags

    from ircore import config_cli  # noqa: PLC0415 - CLI only

    argv = sys.argv if argv is None else argv
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
        except (ValueError, FileNotFoundError, FileExistsError, anderson.SolverDivergedError) as err:
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
