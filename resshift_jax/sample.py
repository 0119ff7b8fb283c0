"""Restore one image or a folder of images with a ResShift model.

    python -m resshift_jax.sample      # the embedded default: x4 SR of a bundled held-out photo
    python -m resshift_jax.sample --config configs/resshift/realsr_x4_v3.py --config.input=photo.png \
        --config.output=results --config.unet_checkpoint=checkpoints/realsr_x4_v3/unet \
        --config.autoencoder_checkpoint=checkpoints/realsr_x4_v3/autoencoder

The two checkpoint directories are written by ``python -m resshift_jax.convert`` (one run for the UNet
``.pth``, one for the autoencoder ``.pth``). Every setting is a config field (``--config.<field>=value``; an
unknown field is an error): input / output at the top level, as for ``deqir_jax.sample``, the sampler settings
in the ``sample`` section (:func:`resshift_jax.sample_config.sample_section`):

* ``input``: an image file or a folder of images; ``input_is_measurement``: True (the released presets) when
  ``input`` holds LQ images, False (the embedded preset) when it is a clean image that the command degrades
  with MATLAB bicubic x sf, restores and scores: it writes ``lq.png`` (the degraded input), ``bicubic.png`` (the
  bicubic baseline), ``restored.png``, ``reference.png``, ``side_by_side.png`` (LQ | bicubic | restored |
  reference) and ``metrics.json`` (PSNR / SSIM, RGB and Y channel, of the restored and the bicubic image, wall
  time);
* ``reference``: ground truth of LQ inputs (a file, or a folder with same-named files): the scores go to
  ``metrics.json``;
* ``mask``: inpainting models (a file for one image, a folder with same-named files for a folder; white / 1 =
  unknown); the known pixels are pasted back;
* ``output``: the results folder, default a fresh ``outputs/resshift/run-<date>-<time>``; ``overwrite``;
* ``unet_checkpoint``, ``autoencoder_checkpoint``: the converted orbax checkpoint directories;
* ``sample.seed`` (12345, as the official script): each image gets ``image_key(seed, file name)``, so its
  result does not depend on the other files of a folder (or on a resumed run); ``sample.tile_size``,
  ``tile_overlap``, ``batch_size``, ``tile_weighting``, ``mask_lq``, ``mask_back``, ``dtype``.

Outputs of LQ inputs are ``<output>/<input stem>.png`` (8-bit, written atomically). An existing output is
never replaced without ``overwrite``: for one image that is an error, in a folder run the image is skipped
(so an interrupted run can be resumed). Every problem is reported as one line on stderr, exit status 1.
:func:`restore_lq_images` is the command from Python.
"""
from __future__ import annotations

import os
import pathlib
import sys
import time
import zlib
from typing import Any, Iterable, NoReturn, Optional

import jax
import ml_collections
import numpy as np

from ircore import checkpoints, compile_cache, figures, files, images, scoring
from resshift_jax import pipeline, resize
from resshift_jax.models import vq

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "resshift" / "embedded_x4.py"
DEFAULT_OUTPUT_PARENT = pathlib.Path("outputs") / "resshift"
IO_FIELDS = ("input", "input_is_measurement", "reference", "mask", "output", "overwrite")
CLEAN_IMAGE_OUTPUTS = ("lq.png", "bicubic.png", "restored.png", "reference.png", "side_by_side.png",
                       "metrics.json")


class SampleError(ValueError):
    """A user-facing problem (missing checkpoint, unreadable image, bad mask, existing output)."""


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


def _partner_files(kind: str, location: str, inputs: list[pathlib.Path], single: bool) -> list[pathlib.Path]:
    """The ``kind`` (mask / reference) file of every input: ``location`` itself for one image, the same-named
    file in the folder ``location`` for a folder."""
    where = pathlib.Path(location)
    if not where.exists():
        raise SampleError(f"{kind} {where} does not exist")
    if single:
        if where.is_dir():
            raise SampleError(f"the input is one image, so --config.{kind} must be a file")
        return [where]
    if not where.is_dir():
        raise SampleError(f"the input is a folder, so --config.{kind} must be a folder too")
    found = [where / p.name for p in inputs]
    missing = [m.name for m in found if not m.is_file()]
    if missing:
        raise SampleError(f"no {kind} in {where} for: {', '.join(missing)}")
    return found


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
    if mask_path:
        masks = _partner_files("mask", mask_path, inputs, not in_path.is_dir())
    outputs = [out_dir / f"{p.stem}.png" for p in inputs]
    seen: dict[pathlib.Path, pathlib.Path] = {}
    for src, dst in zip(inputs, outputs):
        if dst in seen:
            raise SampleError(f"{seen[dst].name} and {src.name} would both be written to {dst}")
        seen[dst] = src
    return list(zip(inputs, masks, outputs))


def image_scores(restored: np.ndarray, reference: np.ndarray,
                 scorer: Optional[scoring.Scorer] = None) -> dict[str, float | None]:
    """PSNR / SSIM of a [-1, 1] image (1, H, W, 3) against the reference, on RGB and on the Y channel, and
    LPIPS (``None`` without a scorer that has the ``lpips`` extra's weights)."""
    scorer = scoring.Scorer(use_lpips=False) if scorer is None else scorer
    return scorer(restored, reference, y_channel=True)


# ----------------------------------------------------------------------------------------------- LQ inputs
def _restore_jobs(cfg, restorer, jobs, references, networks, *, progress, log, scorer) -> tuple[list, dict]:
    """Restores every job (input, mask, output) not written yet; returns (files written, scores by file name)."""
    single = not pathlib.Path(cfg.input).is_dir()
    preloaded = {}
    if single:  # report a bad input before the (slow) checkpoint loading and compilation
        preloaded[0] = read_job(jobs[0][0], jobs[0][1])
    unet_params, vq_params = load_networks(cfg) if networks is None else networks
    written, failed, skipped, scores = [], [], [], {}
    indices: Iterable[int] = range(len(jobs))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, total=len(jobs), unit="image", disable=len(jobs) < 2)
    for i in indices:
        src, mask_file, dst = jobs[i]
        if dst.exists() and not cfg.overwrite:
            skipped.append(dst.name)
            continue
        try:
            lq, mask = preloaded.pop(i) if i in preloaded else read_job(src, mask_file)
            reference = None if references is None else _read(references[i], "reference")
        except SampleError as err:
            if single:
                raise
            failed.append(src.name)
            log(f"error: {err}")
            continue
        out = np.asarray(restorer(lq, unet_params, vq_params, image_key(cfg.sample.seed, src.name), mask=mask))
        if reference is not None:
            if reference.shape != out.shape:
                raise SampleError(f"reference {references[i]} is {reference.shape[2]}x{reference.shape[1]} but the "
                                  f"restored {src.name} is {out.shape[2]}x{out.shape[1]} (width x height)")
            scores[src.name] = image_scores(out, reference, scorer)
        written.append(images.write_png(dst, out))
    if skipped:
        log(f"skipped {len(skipped)} existing output(s) (pass --config.overwrite=True to replace them)")
    if failed:
        raise SampleError(f"{len(failed)} input(s) could not be read: {', '.join(failed)}")
    return written, scores


def _restore_lq_inputs(cfg, restorer, out_dir, networks, *, progress, log, scorer) -> dict[str, Any]:
    jobs = plan_jobs(cfg.input, out_dir, cfg.mask or None)
    single = not pathlib.Path(cfg.input).is_dir()
    if single and jobs[0][2].exists() and not cfg.overwrite:
        raise SampleError(f"output {jobs[0][2]} exists; pass --config.overwrite=True to replace it")
    try:
        restorer.check_mask(bool(cfg.mask))
    except ValueError as err:
        raise SampleError(str(err)) from None
    references = None
    if cfg.reference:
        references = _partner_files("reference", cfg.reference, [j[0] for j in jobs], single)
    written, scores = _restore_jobs(cfg, restorer, jobs, references, networks, progress=progress, log=log,
                                    scorer=scorer)
    if scores:
        record = {"model": cfg.get("name", ""), "seed": int(cfg.sample.seed), "reference": str(cfg.reference),
                  "images": scores}
        written.append(files.write_json(pathlib.Path(out_dir) / "metrics.json", record))
    return {"folder": pathlib.Path(out_dir).resolve(), "written": written, "scores": scores}


# ----------------------------------------------------------------------------------------------- clean input
def degrade_and_restore(
    hq: np.ndarray, restorer: pipeline.Restorer, networks: tuple[Any, Any], key: jax.Array
) -> dict[str, Any]:
    """A clean (1, H, W, 3) image in [-1, 1] -> ``{"hq", "lq", "bicubic", "restored", "wall_time_s"}``.

    The image is cropped to a multiple of sf at the bottom/right, degraded with MATLAB bicubic x 1/sf (the
    ``bicsr`` training degradation), restored with ``restorer`` (:func:`resshift_jax.pipeline.make_restorer`)
    and up-sampled with PyTorch bicubic for the baseline (clamped to [-1, 1]). ``wall_time_s`` covers the
    restoration call (compilation included on a first call)."""
    from resshift_jax.degradations import bicubic_degrade  # noqa: PLC0415

    sf = restorer.sf
    if sf < 2 or restorer.cond_mask:
        raise SampleError(f"model {restorer.name!r} is not a super-resolution model (sf {sf}); degrading a clean "
                          f"image needs one: give LQ images with --config.input_is_measurement=True")
    height, width = hq.shape[1] // sf * sf, hq.shape[2] // sf * sf
    if height == 0 or width == 0:
        raise SampleError(f"the clean image ({hq.shape[1]}x{hq.shape[2]}) is smaller than the scale factor {sf}")
    hq = np.asarray(hq[:, :height, :width], np.float32)
    lq = np.asarray(bicubic_degrade(hq, sf), np.float32)
    start = time.perf_counter()
    restored = np.asarray(jax.block_until_ready(restorer(lq, networks[0], networks[1], key)))
    wall = time.perf_counter() - start
    bicubic = np.clip(np.asarray(resize.interpolate_bicubic(lq, scale_factor=float(sf))), -1.0, 1.0)
    return {"hq": hq, "lq": lq, "bicubic": bicubic, "restored": restored, "wall_time_s": wall}


def restore_clean_image(
    cfg: ml_collections.ConfigDict,
    restorer: pipeline.Restorer,
    out_dir: str | os.PathLike,
    *,
    networks: Optional[tuple[Any, Any]] = None,
    scorer: Optional[scoring.Scorer] = None,
) -> dict[str, Any]:
    """Degrades the clean image ``cfg.input`` (bicubic x 1/sf), restores it and writes the result files (see the
    module docstring) into ``out_dir``, which must not hold them yet; returns the metrics record."""
    hq_path, out_dir = pathlib.Path(cfg.input), pathlib.Path(out_dir)
    if hq_path.is_dir():
        raise SampleError(f"input {hq_path} is a folder; a clean image to degrade is one file (LQ images: "
                          f"--config.input_is_measurement=True)")
    taken = [n for n in CLEAN_IMAGE_OUTPUTS if (out_dir / n).exists()]
    if taken and not cfg.overwrite:
        raise SampleError(f"{out_dir} already holds {', '.join(taken)}; choose another --config.output")
    hq = _read(hq_path, "image")
    networks = load_networks(cfg) if networks is None else networks
    res = degrade_and_restore(hq, restorer, networks, image_key(cfg.sample.seed, hq_path.name))
    for name in ("lq", "bicubic", "restored"):
        images.write_png(out_dir / f"{name}.png", res[name])
    images.write_png(out_dir / "reference.png", res["hq"])
    restored_scores, bicubic_scores = image_scores(res["restored"], res["hq"], scorer), image_scores(
        res["bicubic"], res["hq"], scorer)
    images.write_png(out_dir / "side_by_side.png", figures.comparison([
        ("LQ input", res["lq"]), (figures.score_label("bicubic", bicubic_scores), res["bicubic"]),
        (figures.score_label("restored", restored_scores), res["restored"]), ("reference", res["hq"])]))
    record = {
        "image": str(hq_path), "model": cfg.get("name", ""), "sf": restorer.sf,
        "degradation": "matlab_bicubic", "hq_size": list(res["hq"].shape[1:3]), "lq_size": list(res["lq"].shape[1:3]),
        "steps": int(cfg.diffusion.steps), "nfe": int(cfg.diffusion.steps), "seed": int(cfg.sample.seed),
        "restored": restored_scores, "bicubic": bicubic_scores,
        "wall_time_s": res["wall_time_s"], "folder": str(out_dir.resolve()),
        "side_by_side": ["lq", "bicubic", "restored", "reference"],
    }
    files.write_json(out_dir / "metrics.json", record)
    return record


# ----------------------------------------------------------------------------------------------- the command
def restore_lq_images(
    cfg: ml_collections.ConfigDict,
    *,
    networks: Optional[tuple[Any, Any]] = None,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Runs what ``cfg`` asks for (``input``, ``input_is_measurement``, ``reference``, ``mask``, ``output``,
    ``overwrite``, ``sample``: see the module docstring); returns ``{"folder", "written"}`` plus ``"metrics"``
    (a clean input: the metrics record) or ``"scores"`` (LQ inputs: scores by file name, with a reference).

    ``networks``: (unet_params, vq_params), else loaded from the config's checkpoint fields. Raises
    :class:`SampleError` (one line) for the first problem of a single-image run; in a folder run unreadable
    images are reported through ``log`` and the rest is processed, then a SampleError names them.
    """
    missing = [f for f in IO_FIELDS + ("sample",) if f not in cfg]
    if missing:
        raise SampleError(f"the config lacks {', '.join(missing)}; start from a preset (configs/resshift/*.py)")
    if not cfg.input:
        raise SampleError("no input given: pass --config.input=IMAGE_OR_FOLDER")
    if not cfg.input_is_measurement and (cfg.mask or cfg.reference):
        raise SampleError("--config.mask and --config.reference go with LQ inputs "
                          "(--config.input_is_measurement=True); a clean input is its own reference")
    try:
        restorer = pipeline.make_restorer(cfg)
    except ValueError as err:
        raise SampleError(str(err)) from None
    out_dir = pathlib.Path(cfg.output) if cfg.output else None
    scorer = scoring.Scorer(use_lpips=bool(cfg.get("score_lpips", True)))
    if not cfg.input_is_measurement:
        if not pathlib.Path(cfg.input).exists():
            raise SampleError(f"input {cfg.input} does not exist")
        out_dir = out_dir or images.fresh_folder(DEFAULT_OUTPUT_PARENT)
        record = restore_clean_image(cfg, restorer, out_dir, networks=networks, scorer=scorer)
        return {"folder": out_dir.resolve(), "written": [out_dir / n for n in CLEAN_IMAGE_OUTPUTS],
                "metrics": record}
    out_dir = out_dir or images.fresh_folder(DEFAULT_OUTPUT_PARENT)
    return _restore_lq_inputs(cfg, restorer, out_dir, networks, progress=progress, log=log, scorer=scorer)


def _lpips(score: dict, sep: str = " LPIPS ") -> str:
    return f"{sep}{score['lpips']:.4f}" if score.get("lpips") is not None else ""


def _lpips_note(scores: Iterable[dict]) -> list[str]:
    missing = any(s.get("lpips") is None for s in scores)
    return ["LPIPS not measured: install the lpips extra (pip install '.[lpips]')"] if missing else []


def summary(result: dict[str, Any]) -> list[str]:
    """The lines the command prints for a :func:`restore_lq_images` result."""
    if "metrics" in result:
        record = result["metrics"]
        r, b = record["restored"], record["bicubic"]
        return [f"{record['image']}: x{record['sf']} in {record['wall_time_s']:.1f} s, PSNR {r['psnr']:.2f} dB "
                f"SSIM {r['ssim']:.4f}{_lpips(r)} (bicubic {b['psnr']:.2f} dB / {b['ssim']:.4f}{_lpips(b, ' / ')})",
                f"results in {record['folder']}"] + _lpips_note([r])
    lines = [f"{name}: PSNR {score['psnr']:.2f} dB SSIM {score['ssim']:.4f}{_lpips(score)}"
             for name, score in result["scores"].items()] + _lpips_note(result["scores"].values())
    pngs = [p for p in result["written"] if p.suffix == ".png"]
    return lines + [f"wrote {len(pngs)} image(s) to {result['folder']}"]


def _fail(message: str) -> NoReturn:
    print(f"resshift_jax.sample: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(1)


def _define_config_flag(argv: list[str]) -> None:
    """``--config``, locked: a preset name (``embedded_x4``, ``realsr_x4_v3``) or a config file path; a bad preset
    or an unknown ``--config.<field>`` ends as one line (:mod:`ircore.config_cli`)."""
    from ircore import config_cli  # noqa: PLC0415 - CLI only

    default = str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None
    config_cli.define_config_flag("resshift_jax.sample", default=default, argv=argv,
                                  help_string="ResShift preset name (embedded_x4, realsr_x4_v3, bicsr_x4, ...: "
                                  "configs/resshift/<name>.py) or a config file path; default: the embedded x4 model")


def _parse_flags(args: list[str]) -> list[str]:
    from ircore import config_cli  # noqa: PLC0415

    return config_cli.flags_parser("resshift_jax.sample")(args)


def main(argv: list[str] | None = None) -> None:
    from absl import app, flags, logging

    argv = sys.argv if argv is None else argv
    _define_config_flag(argv)

    def run(args):
        logging.set_verbosity(logging.ERROR)  # orbax reports every item it does not restore as a warning
        if len(args) > 1:
            _fail(f"unexpected argument(s) {' '.join(args[1:])} (write --config.FIELD=VALUE, with '=')")
        if flags.FLAGS.config is None:
            raise app.UsageError(f"no --config given and the default {DEFAULT_CONFIG} is not here (the package "
                                 "was installed without its repository): pass --config configs/resshift/<model>.py")
        try:
            compile_cache.enable(flags.FLAGS.config.get("compilation_cache", "auto"))
            result = restore_lq_images(flags.FLAGS.config, log=lambda msg: print(msg, file=sys.stderr))
        except (SampleError, FileNotFoundError, ValueError) as err:
            _fail(str(err))
        print("\n".join(summary(result)))

    app.run(run, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
