"""Restore one image or a folder of images with a ResShift model.

    python -m resshift_jax.sample      # the embedded default: x4 SR of a bundled held-out photo
    python -m resshift_jax.sample --config configs/resshift/realsr_x4_v3.py --in photo.png --out results \
        --config.unet_checkpoint=checkpoints/realsr_x4_v3/unet \
        --config.autoencoder_checkpoint=checkpoints/realsr_x4_v3/autoencoder

The two checkpoint directories are written by ``python -m resshift_jax.convert`` (one run for the UNet
``.pth``, one for the autoencoder ``.pth``). Inpainting models need ``--mask`` (a file for one image, a folder
with same-named files for a folder; white / 1 = unknown); the known pixels are pasted back.

With no ``--in``, the command degrades a clean image (``--hq IMAGE``, default the bundled held-out photo of
:mod:`ircore.photos`) with MATLAB bicubic x sf, restores it and writes ``lq.png`` (the degraded input),
``bicubic.png`` (the bicubic baseline), ``restored.png``, ``reference.png``, ``side_by_side.png`` (LQ |
bicubic | restored | reference) and ``metrics.json`` (PSNR / SSIM, RGB and Y channel, of the restored and the
bicubic image, wall time); :func:`restore_clean_image` is the same from Python. ``--config`` defaults to
:data:`DEFAULT_CONFIG` (the small pixel-space x4 model this project trained and ships), ``--out`` to a fresh
``outputs/resshift/run-<date>-<time>`` folder.

Outputs of ``--in`` runs are ``<out>/<input stem>.png`` (8-bit, written atomically). An existing output is
never replaced without ``--overwrite``: for one image that is an error, in a folder run the image is skipped
(so an interrupted run can be resumed). Every problem is reported as one line on stderr, exit status 1.

Sampling settings are config fields (added here when the config file lacks them; override with
``--config.<field>=value``):

* ``unet_checkpoint``, ``autoencoder_checkpoint``: the converted orbax checkpoint directories;
* ``seed`` (12345, as the official script): each image gets ``image_key(seed, file name)``, so its result does
  not depend on the other files of a folder (or on a resumed run);
* ``tile_size``, ``tile_overlap`` (LQ pixels; official chop defaults 512 / 64 at x4, scaled by 4 // sf),
  ``batch_size`` (tiles per network call), ``tile_weighting`` (``uniform`` = official averaging, or
  ``gaussian``);
* ``mask_lq`` (set the unknown area of the LQ to -1), ``mask_back`` (paste known pixels back);
* ``dtype``: UNet compute dtype (``float32``, ``bfloat16``, ``float16``).
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import time
import zlib
from typing import Any, Iterable, Optional

import jax
import ml_collections
import numpy as np

from ircore import checkpoints, images, metrics, photos
from resshift_jax import pipeline, resize
from resshift_jax.models import vq

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "resshift" / "embedded_x4.py"
DEFAULT_OUTPUT_PARENT = pathlib.Path("outputs") / "resshift"


class SampleError(ValueError):
    """A user-facing problem (missing checkpoint, unreadable image, bad mask, existing output)."""


# ----------------------------------------------------------------------------------------------- config
def sample_defaults(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The sampling fields and their defaults for ``cfg`` (tile defaults depend on ``cfg.diffusion.sf``)."""
    tile_size, tile_overlap = pipeline.default_tiling(int(cfg.diffusion.sf))
    return {
        "unet_checkpoint": "",
        "autoencoder_checkpoint": "",
        "seed": 12345,
        "tile_size": tile_size,
        "tile_overlap": tile_overlap,
        "batch_size": 1,
        "tile_weighting": "uniform",
        "mask_lq": True,
        "mask_back": True,
        "dtype": "float32",
    }


_TYPES = {"unet_checkpoint": str, "autoencoder_checkpoint": str, "seed": int, "tile_size": int,
          "tile_overlap": int, "batch_size": int, "tile_weighting": str, "mask_lq": bool, "mask_back": bool,
          "dtype": str}


def with_sample_fields(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``cfg`` with every missing sampling field set to its default and the given ones type-checked."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    for name, default in sample_defaults(cfg).items():
        if name not in cfg or cfg[name] is None:
            cfg[name] = default
            continue
        value, kind = cfg[name], _TYPES[name]
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # e.g. a checkpoint directory named "123"
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise SampleError(f"config field {name} must be {kind.__name__}, got {value!r} "
                              f"(on the command line write --config.{name}=VALUE)")
        cfg[name] = value
    return cfg


def unknown_fields(cfg: Any, reference: Any, prefix: str = "") -> list[str]:
    """Dotted names present in ``cfg`` but neither in ``reference`` nor among the sampling fields (typos)."""
    found = []
    for name in cfg.keys():
        dotted = f"{prefix}{name}"
        if name not in reference:
            if prefix or name not in _TYPES:
                found.append(dotted)
            continue
        if hasattr(cfg[name], "keys") and hasattr(reference[name], "keys"):
            found += unknown_fields(cfg[name], reference[name], dotted + ".")
    return found


# ----------------------------------------------------------------------------------------------- networks
def _load(directory: str, field: str, part: str) -> Any:
    if not directory:
        raise SampleError(f"no {part} checkpoint given: pass --config.{field}=DIR "
                          f"(convert the released .pth with python -m resshift_jax.convert)")
    path = pathlib.Path(directory).expanduser()
    if not path.exists():
        raise SampleError(f"{part} checkpoint directory {path} does not exist (--config.{field})")
    try:
        meta = checkpoints.restore_metadata(path)
        params = checkpoints.restore_params(path)
    except (FileNotFoundError, ValueError) as err:
        raise SampleError(f"cannot read the {part} checkpoint {path}: {' '.join(str(err).split())}") from None
    stored = meta.get("part")
    if stored is not None and stored != part:
        raise SampleError(f"{path} holds the {stored}, but --config.{field} must point to the {part}")
    return params


def load_networks(cfg: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """(unet_params, vq_params) from ``cfg.unet_checkpoint`` / ``cfg.autoencoder_checkpoint`` (vq_params is
    None for a pixel-space model)."""
    unet = _load(cfg.get("unet_checkpoint", ""), "unet_checkpoint", "unet")
    if vq.is_pixel_space(cfg.autoencoder):
        return unet, None
    return unet, _load(cfg.get("autoencoder_checkpoint", ""), "autoencoder_checkpoint", "autoencoder")


# ----------------------------------------------------------------------------------------------- files
def image_key(seed: int, name: str) -> jax.Array:
    """The PRNG key of one input file: ``fold_in(key(seed), crc32(file name))``."""
    return jax.random.fold_in(jax.random.key(int(seed)), zlib.crc32(name.encode("utf-8")))


_GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as an OpenCV gray read


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file -> (1, h, w, 1) float32 in [-1, 1], 1 = unknown (gray value of the file)."""
    rgb = images.read_image(path)
    return np.tensordot(rgb, _GRAY, axes=([-1], [0]))[..., None].astype(np.float32)


def _read(path: pathlib.Path, what: str) -> np.ndarray:
    try:
        return read_mask(path) if what == "mask" else images.read_image(path)
    except FileNotFoundError as err:
        raise SampleError(str(err)) from None
    except ValueError as err:
        raise SampleError(f"unreadable {what} {path}: {' '.join(str(err).split())}") from None


def read_job(image_path: pathlib.Path, mask_path: Optional[pathlib.Path]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Reads an input image and its mask (or None), checking that their sizes agree (SampleError if not)."""
    lq = _read(image_path, "image")
    if mask_path is None:
        return lq, None
    mask = _read(mask_path, "mask")
    if mask.shape[1:3] != lq.shape[1:3]:
        raise SampleError(f"mask {mask_path} is {mask.shape[2]}x{mask.shape[1]} but image {image_path} is "
                          f"{lq.shape[2]}x{lq.shape[1]} (width x height)")
    return lq, mask


def plan_jobs(
    in_path: str | os.PathLike, out_dir: str | os.PathLike, mask_path: Optional[str | os.PathLike] = None
) -> list[tuple[pathlib.Path, Optional[pathlib.Path], pathlib.Path]]:
    """(input, mask or None, output) for one image or every image of a folder (sorted by name)."""
    in_path, out_dir = pathlib.Path(in_path), pathlib.Path(out_dir)
    if not in_path.exists():
        raise SampleError(f"input {in_path} does not exist")
    if out_dir.exists() and not out_dir.is_dir():
        raise SampleError(f"output {out_dir} exists and is not a directory")
    if in_path.is_dir():
        try:
            inputs = images.list_images(in_path)
        except (FileNotFoundError, ValueError) as err:
            raise SampleError(str(err)) from None
    else:
        inputs = [in_path]
    masks: list[Optional[pathlib.Path]] = [None] * len(inputs)
    if mask_path is not None:
        mask_path = pathlib.Path(mask_path)
        if not mask_path.exists():
            raise SampleError(f"mask {mask_path} does not exist")
        if in_path.is_dir():
            if not mask_path.is_dir():
                raise SampleError(f"the input {in_path} is a folder, so --mask must be a folder too")
            masks = [mask_path / p.name for p in inputs]
            missing = [m.name for m in masks if not m.is_file()]
            if missing:
                raise SampleError(f"no mask in {mask_path} for: {', '.join(missing)}")
        else:
            if mask_path.is_dir():
                raise SampleError(f"the input {in_path} is one image, so --mask must be a file")
            masks = [mask_path]
    outputs = [out_dir / f"{p.stem}.png" for p in inputs]
    seen: dict[pathlib.Path, pathlib.Path] = {}
    for src, dst in zip(inputs, outputs):
        if dst in seen:
            raise SampleError(f"{seen[dst].name} and {src.name} would both be written to {dst}")
        seen[dst] = src
    return list(zip(inputs, masks, outputs))


def restore_files(
    cfg: ml_collections.ConfigDict,
    in_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    mask_path: Optional[str | os.PathLike] = None,
    *,
    overwrite: bool = False,
    networks: Optional[tuple[Any, Any]] = None,
    progress: bool = True,
    log=print,
) -> list[pathlib.Path]:
    """Restores ``in_path`` (an image or a folder) into ``out_dir``; returns the files written.

    ``networks``: (unet_params, vq_params), else loaded from the config's checkpoint fields. Raises
    :class:`SampleError` (one line) for the first problem of a single-image run; in a folder run unreadable
    images are reported through ``log`` and the rest is processed, then a SampleError names them.
    """
    cfg = with_sample_fields(cfg)
    jobs = plan_jobs(in_path, out_dir, mask_path)
    single = not pathlib.Path(in_path).is_dir()
    if single and jobs[0][2].exists() and not overwrite:
        raise SampleError(f"output {jobs[0][2]} exists; pass --overwrite to replace it")
    cond_mask = bool(cfg.model.get("cond_mask", False))
    if cond_mask and mask_path is None:
        raise SampleError(f"model {cfg.get('name', '')!r} is an inpainting model: pass --mask")
    if not cond_mask and mask_path is not None:
        raise SampleError(f"model {cfg.get('name', '')!r} takes no mask; drop --mask")
    preloaded = {}
    if single:  # report a bad input before the (slow) checkpoint loading and compilation
        preloaded[0] = read_job(jobs[0][0], jobs[0][1])
    try:
        pipeline.check_config(cfg)
    except ValueError as err:
        raise SampleError(str(err)) from None
    unet_params, vq_params = load_networks(cfg) if networks is None else networks

    written, failed, skipped = [], [], []
    indices: Iterable[int] = range(len(jobs))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, total=len(jobs), unit="image", disable=len(jobs) < 2)
    for i in indices:
        src, mask_file, dst = jobs[i]
        if dst.exists() and not overwrite:
            skipped.append(dst.name)
            continue
        try:
            lq, mask = preloaded.pop(i) if i in preloaded else read_job(src, mask_file)
        except SampleError as err:
            if single:
                raise
            failed.append(src.name)
            log(f"error: {err}")
            continue
        out = pipeline.restore_image(
            lq, unet_params, vq_params, cfg, image_key(cfg.seed, src.name), mask=mask,
            tile_size=cfg.tile_size, tile_overlap=cfg.tile_overlap, batch_size=cfg.batch_size,
            weighting=cfg.tile_weighting, mask_lq=cfg.mask_lq, mask_back=cfg.mask_back, dtype=cfg.dtype)
        written.append(images.write_png(dst, np.asarray(out)))
    if skipped:
        log(f"skipped {len(skipped)} existing output(s) (pass --overwrite to replace them)")
    if failed:
        raise SampleError(f"{len(failed)} input(s) could not be read: {', '.join(failed)}")
    return written


def image_scores(restored: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """PSNR / SSIM of a [-1, 1] image (1, H, W, 3) against the reference, on RGB and on the Y channel."""
    a, b = images.to_unit(np.clip(restored, -1.0, 1.0)), images.to_unit(reference)
    return {"psnr": float(metrics.psnr(a, b)[0]), "ssim": float(metrics.ssim(a, b)[0]),
            "psnr_y": float(metrics.psnr(a, b, y_channel=True)[0]),
            "ssim_y": float(metrics.ssim(a, b, y_channel=True)[0])}


def degrade_and_restore(
    hq: np.ndarray, cfg: ml_collections.ConfigDict, networks: tuple[Any, Any], key: jax.Array
) -> dict[str, Any]:
    """A clean (1, H, W, 3) image in [-1, 1] -> ``{"hq", "lq", "bicubic", "restored", "wall_time_s"}``.

    The image is cropped to a multiple of sf at the bottom/right, degraded with MATLAB bicubic x 1/sf (the
    ``bicsr`` training degradation), restored with ``cfg``'s sampling settings (:func:`with_sample_fields`)
    and up-sampled with PyTorch bicubic for the baseline (clamped to [-1, 1]). ``wall_time_s`` covers the
    restoration call (compilation included on a first call)."""
    from resshift_jax.degradations import bicubic_degrade  # noqa: PLC0415

    cfg = with_sample_fields(cfg)
    sf = int(cfg.diffusion.sf)
    if sf < 2 or cfg.model.get("cond_mask", False):
        raise SampleError(f"model {cfg.get('name', '')!r} is not a super-resolution model (sf {sf}); degrading a "
                          f"clean image needs one: give its LQ input with --in")
    height, width = hq.shape[1] // sf * sf, hq.shape[2] // sf * sf
    if height == 0 or width == 0:
        raise SampleError(f"the clean image ({hq.shape[1]}x{hq.shape[2]}) is smaller than the scale factor {sf}")
    hq = np.asarray(hq[:, :height, :width], np.float32)
    lq = np.asarray(bicubic_degrade(hq, sf), np.float32)
    start = time.perf_counter()
    restored = pipeline.restore_image(
        lq, networks[0], networks[1], cfg, key, tile_size=cfg.tile_size, tile_overlap=cfg.tile_overlap,
        batch_size=cfg.batch_size, weighting=cfg.tile_weighting, dtype=cfg.dtype)
    restored = np.asarray(jax.block_until_ready(restored))
    wall = time.perf_counter() - start
    bicubic = np.clip(np.asarray(resize.interpolate_bicubic(lq, scale_factor=float(sf))), -1.0, 1.0)
    return {"hq": hq, "lq": lq, "bicubic": bicubic, "restored": restored, "wall_time_s": wall}


def restore_clean_image(
    cfg: ml_collections.ConfigDict,
    hq_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    networks: Optional[tuple[Any, Any]] = None,
) -> dict[str, Any]:
    """Degrades the clean image ``hq_path`` (bicubic x 1/sf), restores it and writes the result files (see the
    module docstring) into ``out_dir``, which must not hold them yet; returns the metrics record."""
    cfg = with_sample_fields(cfg)
    hq_path, out_dir = pathlib.Path(hq_path), pathlib.Path(out_dir)
    names = ("lq.png", "bicubic.png", "restored.png", "reference.png", "side_by_side.png", "metrics.json")
    taken = [n for n in names if (out_dir / n).exists()]
    if taken:
        raise SampleError(f"{out_dir} already holds {', '.join(taken)}; choose another --out")
    hq = _read(hq_path, "image")
    networks = load_networks(cfg) if networks is None else networks
    res = degrade_and_restore(hq, cfg, networks, image_key(cfg.seed, hq_path.name))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, img in (("lq", res["lq"]), ("bicubic", res["bicubic"]), ("restored", res["restored"]),
                      ("reference", res["hq"])):
        images.write_png(out_dir / f"{name}.png", img)
    images.write_png(out_dir / "side_by_side.png",
                     images.side_by_side([res["lq"], res["bicubic"], res["restored"], res["hq"]]))
    record = {
        "image": str(hq_path), "model": cfg.get("name", ""), "sf": int(cfg.diffusion.sf),
        "degradation": "matlab_bicubic", "hq_size": list(res["hq"].shape[1:3]), "lq_size": list(res["lq"].shape[1:3]),
        "steps": int(cfg.diffusion.steps), "nfe": int(cfg.diffusion.steps), "seed": int(cfg.seed),
        "restored": image_scores(res["restored"], res["hq"]), "bicubic": image_scores(res["bicubic"], res["hq"]),
        "wall_time_s": res["wall_time_s"], "folder": str(out_dir.resolve()),
        "side_by_side": ["lq", "bicubic", "restored", "reference"],
    }
    tmp = out_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, out_dir / "metrics.json")
    return record


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    from absl import app, flags
    from ml_collections import config_flags

    from ircore.config_utils import load_config_file

    argv = sys.argv if argv is None else argv
    flags.DEFINE_string("in", None, "an LQ image file or a folder of LQ images to restore")
    flags.DEFINE_string("hq", None, "a clean image to degrade (bicubic x sf), restore and score; the default "
                                    "when --in is not given: the bundled held-out photo")
    flags.DEFINE_string("out", None, "output folder (default: a fresh outputs/resshift/run-<date>-<time>)")
    flags.DEFINE_string("mask", None, "inpainting mask: a file (one image) or a folder of same-named files")
    flags.DEFINE_bool("overwrite", False, "replace existing output files")
    default = str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None
    config_flags.DEFINE_config_file("config", default, "ResShift config file (configs/resshift/*.py); default: "
                                    "the embedded x4 model", lock_config=False, accept_new_attributes=True,
                                    sys_argv=argv)

    def fail(message: str) -> None:
        print(f"resshift_jax.sample: error: {' '.join(str(message).split())}", file=sys.stderr)
        sys.exit(1)

    def run(args):
        from absl import logging

        logging.set_verbosity(logging.ERROR)  # orbax reports every item it does not restore as a warning
        FLAGS = flags.FLAGS
        if len(args) > 1:
            fail(f"unexpected argument(s) {' '.join(args[1:])} (write --config.FIELD=VALUE, with '=')")
        cfg = FLAGS.config
        if cfg is None:
            raise app.UsageError(f"no --config given and the default {DEFAULT_CONFIG} is not here (the package "
                                 "was installed without its repository): pass --config configs/resshift/<model>.py")
        in_path, hq_path = FLAGS["in"].value, FLAGS.hq
        try:
            if in_path is not None and hq_path is not None:
                raise SampleError("give either --in (LQ inputs) or --hq (a clean image to degrade), not both")
            reference = load_config_file(config_flags.get_config_filename(FLAGS["config"]))
            typos = unknown_fields(cfg, reference)
            if typos:
                raise SampleError(f"unknown config field(s): {', '.join(typos)}")
            out = pathlib.Path(FLAGS.out) if FLAGS.out else None
            if in_path is None:
                if FLAGS.mask is not None:
                    raise SampleError("--mask goes with --in (inpainting inputs)")
                hq_path = hq_path or str(photos.bundled_path(photos.DEFAULT))
                record = restore_clean_image(cfg, hq_path, out or images.fresh_folder(DEFAULT_OUTPUT_PARENT))
                r, b = record["restored"], record["bicubic"]
                print(f"{hq_path}: x{record['sf']} in {record['wall_time_s']:.1f} s, PSNR {r['psnr']:.2f} dB "
                      f"SSIM {r['ssim']:.4f} (bicubic {b['psnr']:.2f} dB / {b['ssim']:.4f})")
                print(f"results in {record['folder']}")
                return
            out = out or images.fresh_folder(DEFAULT_OUTPUT_PARENT)
            written = restore_files(cfg, in_path, out, FLAGS.mask, overwrite=FLAGS.overwrite,
                                    log=lambda msg: print(msg, file=sys.stderr))
        except (SampleError, FileNotFoundError, ValueError) as err:
            fail(str(err))
        print(f"wrote {len(written)} image(s) to {out.resolve()}")

    app.run(run, argv=argv)


if __name__ == "__main__":
    main()
