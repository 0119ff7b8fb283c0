"""Restore images with DeqIR: ``python -m deqir_jax.sample --config configs/deqir/<task>.py [--config.x=y]``.

    python -m deqir_jax.sample      # the embedded default: bicubic SR x4 of a bundled held-out photo, 64x64
    python -m deqir_jax.sample --config configs/deqir/sr_x4.py \
        --config.checkpoint=checkpoints/imagenet256_uncond --config.input=photos/ --config.output=out/

With no ``--config`` the preset is :data:`DEFAULT_CONFIG` (``configs/deqir/sr_bicubic_x4.py:embedded``, the
degradation of the ResShift default too: the small prior
this project trained and ships, restoring the bundled held-out photo of :mod:`ircore.photos`).

For every image (one file or every image of a folder) it synthesises the measurement y = A x (+ noise)
from the clean image, or takes y as given (``--config.input_is_measurement``), runs the parallel
fixed-point solver (or ``--config.sampler=sequential``) and writes, into ``<output>/<image name>/``:
``restored.png``, ``measurement.png`` (the degraded input: y, or A^+ y for vector measurements),
``reference.png`` (when there is one), ``side_by_side.png`` (degraded | restored | reference),
``metrics.json`` (PSNR/SSIM against the reference, iterations, residual history, NFE, wall time) and
``convergence.png`` (relative residual per map evaluation). ``output`` empty (the default) means a fresh
``outputs/deqir/run-<date>-<time>`` folder; existing results are never overwritten unless
``--config.overwrite``. :func:`restore_files` is the same from Python.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from deqir_jax import anderson, init_opt, masks, models, solver_settings
from deqir_jax import operators as ops
from deqir_jax.restore import ChainSettings, make_init_opt_fn, make_restore_fn
from ircore import checkpoints, images, mesh, metrics

OUTPUT_FILES = ("restored.png", "measurement.png", "side_by_side.png", "metrics.json", "convergence.png")
DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "deqir" / "sr_bicubic_x4.py"
DEFAULT_CONFIG_ARG = "embedded"
DEFAULT_OUTPUT_PARENT = pathlib.Path("outputs") / "deqir"


# ------------------------------------------------------------------------------------------ set-up pieces
def settings_from_config(cfg: ml_collections.ConfigDict) -> ChainSettings:
    """The static sampler settings of a preset."""
    return ChainSettings(
        timesteps=int(cfg.timesteps), nw=float(cfg.nw), etw=float(cfg.etw), sampler=cfg.sampler,
        solver=solver_settings.from_config(cfg.solver),
    )


def init_opt_from_config(cfg: ml_collections.ConfigDict) -> init_opt.InitOptConfig:
    """x_T optimisation settings of a preset (``cfg.init_opt``; official Adam lr 2e-5)."""
    c = cfg.init_opt
    return init_opt.InitOptConfig(
        gradient=c.gradient, lr=float(c.learning_rate), n_epochs=int(c.steps), early_stop=float(c.early_stop),
        solver=solver_settings.from_config(c.solver),
    )


def build_operator(cfg: ml_collections.ConfigDict, size: tuple[int, int]) -> ops.LinearOperator:
    """The degradation operator of ``cfg.degradation`` for images of ``size`` (H, W)."""
    params = dict(cfg.degradation.params.to_dict()) if cfg.degradation.params else {}
    name = cfg.degradation.name
    if name == "inpainting" and "mask" not in params:
        kind = cfg.degradation.mask or "stripes"
        params["mask"] = masks.make_mask(kind, size, seed=int(cfg.seed))
    if name == "cs_walshhadamard":
        params.setdefault("seed", int(cfg.seed))
    return ops.make_operator(name, size, **params)


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


def measurement_from_image(op: ops.LinearOperator, img: np.ndarray) -> jax.Array:
    """A given measurement image -> y in the operator layout (SR: the low-resolution image, deblur: the
    blurred image, colorization: the grey image, inpainting: the masked image)."""
    if op.y_layout == "image" and op.y_shape[-1] == img.shape[-1]:
        if tuple(img.shape[1:]) != tuple(op.y_shape):
            raise ValueError(
                f"measurement image is {img.shape[1]}x{img.shape[2]}, {op.name} expects "
                f"{op.y_shape[0]}x{op.y_shape[1]}"
            )
        return jnp.asarray(img)
    if op.name in ("colorization", "inpainting") or op.y_shape[-1] == 1:
        if tuple(img.shape[1:3]) != tuple(op.image_shape[:2]):
            raise ValueError(
                f"measurement image is {img.shape[1]}x{img.shape[2]}, {op.name} expects "
                f"{op.image_shape[0]}x{op.image_shape[1]}"
            )
        return op.A(jnp.asarray(img))
    raise ValueError(f"{op.name} measurements cannot be given as an image; give the clean image instead")


def measurement_image(op: ops.LinearOperator, y: jax.Array) -> np.ndarray:
    """A picture of y: y itself for image measurements (grey ones repeated to RGB), else A^+ y."""
    if op.y_layout == "image":
        arr = np.asarray(y)
        return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr
    return np.asarray(op.A_pinv(y))


def plot_convergence(residuals: np.ndarray, path: pathlib.Path, title: str) -> None:
    """Relative residual per map evaluation (log scale), written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    finite = residuals[np.isfinite(residuals)]
    ax.semilogy(np.arange(1, len(finite) + 1), np.maximum(finite, 1e-12), "o-")
    ax.set_xlabel("map evaluation")
    ax.set_ylabel("relative residual ||F(X)-X|| / ||F(X)||")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_json(path: pathlib.Path, data: dict) -> None:
    """Writes JSON atomically (temporary file in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ the job
def load_params(cfg: ml_collections.ConfigDict) -> Any:
    if not cfg.checkpoint:
        raise ValueError("no prior checkpoint given: set --config.checkpoint=DIR (made by deqir_jax.convert)")
    return checkpoints.restore_params(cfg.checkpoint)


def restore_files(cfg: ml_collections.ConfigDict, params: Any | None = None, *, progress: bool = True) -> list[dict]:
    """Runs the preset on every input image; returns the metrics dict of each (also written to disk)."""
    if not cfg.input:
        raise ValueError("no input given: set --config.input=IMAGE_OR_FOLDER")
    src = pathlib.Path(cfg.input)
    if not src.exists():
        raise FileNotFoundError(f"input {src} does not exist")
    files = images.list_images(src) if src.is_dir() else [src]
    overwrite = bool(cfg.overwrite)
    for file in files if cfg.output else []:
        existing = [n for n in OUTPUT_FILES if (pathlib.Path(cfg.output) / file.stem / n).exists()]
        if existing and not overwrite:
            raise FileExistsError(
                f"{pathlib.Path(cfg.output) / file.stem} already holds {', '.join(existing)}; "
                "use --config.overwrite=True"
            )
    params = load_params(cfg) if params is None else params
    model = models.model_from_config(cfg.model)
    settings = settings_from_config(cfg)
    size = int(cfg.image_size)
    sharding = None
    if settings.sampler == "parallel":
        device_mesh = mesh.make_mesh()
        sharding = mesh.time_sharding(device_mesh)
        # Every device runs the prior on its share of the chain: keep a copy of the weights on each.
        params = jax.device_put(params, mesh.replicated(device_mesh))
    restore_fn = make_restore_fn(model, settings, sharding=sharding)
    opt_fn = None
    if int(cfg.init_opt.steps) > 0:
        opt_fn = make_init_opt_fn(model, settings, init_opt_from_config(cfg), cfg.init_opt.loss, sharding=sharding)
    op = build_operator(cfg, (size, size))
    reference_file = cfg.reference
    # A fresh run folder only once the set-up has worked (a failed start leaves nothing behind).
    out_root = pathlib.Path(cfg.output) if cfg.output else images.fresh_folder(DEFAULT_OUTPUT_PARENT)
    results = []
    for index, file in enumerate(tqdm(files, desc="deqir", unit="img", disable=not progress)):
        img = images.read_image(file)
        if not cfg.input_is_measurement:
            img = prepare_image(img, size, cfg.resize)
        key_xt, key_z, key_y = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), index), 3)
        if cfg.input_is_measurement:
            y = measurement_from_image(op, img)
            reference = prepare_image(images.read_image(reference_file), size, "none") if reference_file else None
        else:
            reference = img
            y = op.A(jnp.asarray(img))
        if cfg.sigma_y > 0:
            y = y + float(cfg.sigma_y) * jax.random.normal(key_y, y.shape, y.dtype)
        x_T = jax.random.normal(key_xt, (1, size, size, 3), jnp.float32)
        z = jax.random.normal(key_z, (1, size, size, 3), jnp.float32)
        start = time.perf_counter()
        opt_record = {}
        if opt_fn is not None:
            target = _init_opt_target(cfg, reference, size)
            opt = jax.block_until_ready(opt_fn(params, op, y, x_T, z, target))
            x_T = opt.best_x_T
            n_opt = int(opt.n_epochs)
            opt_record = {"init_opt": {"loss": cfg.init_opt.loss, "gradient": cfg.init_opt.gradient,
                                       "epochs": n_opt, "best_loss": float(opt.best_loss),
                                       "losses": [float(v) for v in np.asarray(opt.losses)[:n_opt]]}}
        out = jax.block_until_ready(restore_fn(params, op, y, x_T, z))
        wall = time.perf_counter() - start
        anderson.check_result(out)  # one-line SolverDivergedError on NaN / divergence
        restored = np.clip((np.asarray(out.x0) + 1.0) / 2.0, 0.0, 1.0)
        n_evals = int(out.n_evals)
        record = {
            "image": str(file),
            "task": cfg.degradation.name,
            "sampler": settings.sampler,
            "solver": settings.solver.method if settings.sampler == "parallel" else None,
            "solver_settings": dataclasses.asdict(settings.solver) if settings.sampler == "parallel" else None,
            "timesteps": settings.timesteps,
            "map_evaluations": n_evals,  # sequential rounds of network calls (warm start included)
            "nfe": int(out.image_evals),  # single-image network evaluations in all
            "status": anderson.STATUS_NAMES[int(out.status)],
            "residual_history": [float(r) if np.isfinite(r) else None for r in np.asarray(out.residuals)[:n_evals]]
            if settings.sampler == "parallel" else [],
            "wall_time_s": wall,
            "consistency_l2": float(jnp.sqrt(jnp.sum((op.A(out.x0) - y) ** 2))),
            "sigma_y": float(cfg.sigma_y),
            "image_size": size,
            "folder": str((out_root / file.stem).resolve()),
            "side_by_side": ["degraded", "restored"] + (["reference"] if reference is not None else []),
            **opt_record,
        }
        if reference is not None:
            ref01 = (reference + 1.0) / 2.0
            record["psnr"] = float(metrics.psnr(restored, ref01)[0])
            record["ssim"] = float(metrics.ssim(restored, ref01)[0])
        folder = out_root / file.stem
        folder.mkdir(parents=True, exist_ok=True)
        images.write_png(folder / "restored.png", np.asarray(out.x0))
        degraded = measurement_image(op, y)
        images.write_png(folder / "measurement.png", degraded)
        panels = [degraded, np.asarray(out.x0)]
        if reference is not None:
            images.write_png(folder / "reference.png", reference)
            panels.append(reference)
        images.write_png(folder / "side_by_side.png", images.side_by_side(panels))
        if settings.sampler == "parallel":
            plot_convergence(np.asarray(out.residuals), folder / "convergence.png",
                             f"{file.name}: {settings.solver.method}, T={settings.timesteps}")
        write_json(folder / "metrics.json", record)
        results.append(record)
    return results


def _init_opt_target(cfg: ml_collections.ConfigDict, reference: np.ndarray | None, size: int) -> jax.Array:
    """The image the x_T loss compares with (zeros for the measurement loss, which ignores it)."""
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


def main(argv: list[str] | None = None) -> None:
    from absl import app, flags
    from ml_collections import config_flags

    default = f"{DEFAULT_CONFIG}:{DEFAULT_CONFIG_ARG}" if DEFAULT_CONFIG.is_file() else None
    config_flags.DEFINE_config_file("config", default,
                                    "restoration preset (configs/deqir/<task>.py[:imagenet|celeba|embedded]); "
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
            results = restore_files(cfg)
        except (ValueError, FileNotFoundError, FileExistsError, anderson.SolverDivergedError) as err:
            print(f"deqir_jax.sample: error: {' '.join(str(err).split())}", file=sys.stderr)
            sys.exit(1)
        for r in results:
            quality = f" PSNR {r['psnr']:.2f} dB SSIM {r['ssim']:.4f}" if "psnr" in r else ""
            print(f"{r['image']}: {r['status']} after {r['map_evaluations']} evaluations "
                  f"(NFE {r['nfe']}), {r['wall_time_s']:.1f} s{quality}")
        for folder in dict.fromkeys(r["folder"] for r in results):
            print(f"results in {folder}")

    app.run(run, argv=argv)


if __name__ == "__main__":
    main()
