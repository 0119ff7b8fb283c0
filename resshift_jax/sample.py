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
(so an interrupted run can be resumed; with a reference, kept outputs are scored too, so ``metrics.json``
covers every image). The clean-image files appear together (staged in a hidden folder, then renamed,
``metrics.json`` last). Every check that can fail (inputs readable, mask / reference sizes, image large enough
to score, output folder writable, checkpoints of this config's networks) runs before the networks are loaded
or anything is computed; a run that fails before writing anything leaves no folder behind. Every problem is
reported as one line on stderr, exit status 1; Ctrl-C prints how many images were finished and where (rerun
to continue), exit status 130. Large images are cut into tiles: the command says how many before it starts,
estimates the time after the first tiles and, on a terminal, draws progress bars over the images and tiles.
:func:`restore_lq_images` is the command from Python.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile
import time
import uuid
import zlib
from typing import Any, Callable, Iterable, NoReturn, Optional

import jax
import ml_collections
import numpy as np

from ircore import checkpoints, compile_cache, compiling, figures, files, images, logging_utils, scoring
from resshift_jax import networks as nets
from resshift_jax import pipeline, resize
from resshift_jax.models import unet_swin, vq

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "resshift" / "embedded_x4.py"
DEFAULT_OUTPUT_PARENT = pathlib.Path("outputs") / "resshift"
IO_FIELDS = ("input", "input_is_measurement", "reference", "mask", "output", "overwrite")
CLEAN_IMAGE_OUTPUTS = ("lq.png", "bicubic.png", "restored.png", "reference.png", "side_by_side.png",
                       "metrics.json")  # published in this order: metrics.json last marks a complete set
SSIM_MIN_SIZE = 11  # ircore.metrics.ssim: an 11x11 Gaussian window, valid region only
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class SampleError(ValueError):
    """A user-facing problem (missing checkpoint, unreadable image, bad mask, existing output)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, with how far it got; ``str()`` is the one-line message for the user."""

    def __init__(self, done: int, total: int, folder: pathlib.Path):
        self.done, self.total, self.folder = done, total, pathlib.Path(folder)
        if done:
            text = (f"interrupted after {done} of {total} image(s); finished results are in {self.folder}; "
                    f"rerun the same command to continue")
        else:
            text = f"interrupted before the first of {total} image(s) was finished; nothing was written"
        super().__init__(text)


# ----------------------------------------------------------------------------------------------- networks
def _expected_params(cfg: ml_collections.ConfigDict, part: str) -> Any:
    """The parameter tree (``ShapeDtypeStruct`` leaves, nothing allocated) the config's ``part`` needs."""
    if part == "unet":
        return unet_swin.param_shapes(nets.unet(cfg))
    return jax.eval_shape(lambda rng: vq.init_params(cfg.autoencoder, rng), jax.random.key(0))


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def check_params(params: Any, expected: Any, path: pathlib.Path, field: str, part: str) -> None:
    """One-line SampleError unless ``params`` has the names and shapes of ``expected`` (a checkpoint of another
    model, e.g. DeqIR weights, or of another ResShift configuration)."""
    got, want = _shapes(params), _shapes(expected)
    missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    wrong = sorted(k for k in want.keys() & got.keys() if got[k] != want[k])
    if not (missing or extra or wrong):
        return
    if wrong:
        first = wrong[0]
        detail = f"{len(wrong)} parameter(s) of another shape, e.g. {first} is {got[first]}, want {want[first]}"
    else:
        detail = (f"{len(missing)} of its {len(want)} parameters missing (e.g. {missing[0] if missing else '-'}), "
                  f"{len(extra)} unknown (e.g. {extra[0] if extra else '-'})")
    raise SampleError(f"{path} does not hold the {part} of this config's model ({detail}); --config.{field} needs a "
                      f"ResShift checkpoint converted for this config (python -m resshift_jax.convert)")


def _load(directory: str, field: str, part: str, cfg: Optional[ml_collections.ConfigDict] = None) -> Any:
    if not directory:
        raise SampleError(f"no {part} checkpoint given: pass --config.{field}=DIR "
                          f"(convert the released .pth with python -m resshift_jax.convert)")
    path = pathlib.Path(directory).expanduser()
    if not path.exists():
        raise SampleError(f"{part} checkpoint directory {path} does not exist (--config.{field})")
    try:
        meta = checkpoints.restore_metadata(path)
        params = checkpoints.restore_params(path)
    except (OSError, ValueError, KeyError, TypeError) as err:  # orbax's errors for a folder it cannot read
        raise SampleError(f"cannot read the {part} checkpoint {path} (--config.{field}): "
                          f"{' '.join(str(err).split())[:300]}") from None
    stored = meta.get("part")
    if stored is not None and stored != part:
        raise SampleError(f"{path} holds the {stored}, but --config.{field} must point to the {part}")
    if cfg is not None:
        check_params(params, _expected_params(cfg, part), path, field, part)
    return params


def load_networks(cfg: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """(unet_params, vq_params) from ``cfg.unet_checkpoint`` / ``cfg.autoencoder_checkpoint`` (vq_params is
    None for a pixel-space model), each checked against the config's networks (names and shapes)."""
    unet = _load(cfg.get("unet_checkpoint", ""), "unet_checkpoint", "unet", cfg)
    if vq.is_pixel_space(cfg.autoencoder):
        return unet, None
    return unet, _load(cfg.get("autoencoder_checkpoint", ""), "autoencoder_checkpoint", "autoencoder", cfg)


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
        raise SampleError(f"output {out_dir} is a file; --config.output must be a folder")
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


# ----------------------------------------------------------------------------------------------- output folder
def missing_folders(folder: pathlib.Path) -> list[pathlib.Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first (what a run would create)."""
    found = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        found.append(candidate)
    return found


def remove_if_empty(folders: Iterable[pathlib.Path]) -> None:
    """Removes the folders (deepest first) that are empty; stops at the first that is not (never deletes a file)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def check_output_folder(folder: pathlib.Path) -> None:
    """Creates ``folder`` if needed and checks that a file can be written there (one-line SampleError if not)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() and not candidate.is_dir():
            where = "is a file" if candidate == folder else f"is inside {candidate}, which is a file"
            raise SampleError(f"output {folder} {where}; --config.output must be a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise SampleError(f"cannot write to the output folder {folder} ({err.strerror or err}); choose another "
                          f"--config.output") from None


# ----------------------------------------------------------------------------------------------- progress
def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class TileProgress:
    """``on_tile(done, total)`` of the restorer for the command line: a tqdm bar over the tiles (``bar``) and
    two lines through ``log``: after the first call the time it took (compilation included, so the estimate is
    an upper bound), after the second an estimate for the rest at the speed of that call."""

    def __init__(self, total: int, log: Callable[[str], Any], *, bar: bool = True):
        self.start, self.total, self.done, self.calls, self.bar = time.perf_counter(), total, 0, 0, None
        self.log = log
        if bar:
            from tqdm import tqdm  # noqa: PLC0415

            self.bar = tqdm(total=total, unit="tile", leave=False, file=sys.stderr, dynamic_ncols=True)
            self.log = logging_utils.print_above(self.bar, log)

    def __call__(self, done: int, total: int) -> None:
        now, step = time.perf_counter(), done - self.done
        left = total - done
        if self.calls == 0 and left:
            self.log(f"first {done} tile(s) in {_duration(now - self.start)} (compilation included); at most about "
                     f"{_duration((now - self.start) / done * left)} for the other {left}")
        elif self.calls == 1 and left:
            self.log(f"next {step} tile(s) in {_duration(now - self.start)}: about "
                     f"{_duration((now - self.start) / step * left)} for the other {left}")
        self.start, self.calls, self.done = now, self.calls + 1, done
        if self.bar is not None:
            self.bar.update(step)
        if done >= total:
            self.close()

    def close(self) -> None:
        """Removes the bar (also when the work stops early), so that a following message is the last line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def tile_progress(restorer: pipeline.Restorer, height: int, width: int, name: str, log: Callable[[str], Any],
                  bar: bool) -> Optional[TileProgress]:
    """For an LQ image of ``height`` x ``width`` cut into tiles: says how many (before the work starts) and
    returns the progress callback; None for an image that is one tile."""
    count = restorer.tile_count(height, width)
    if count < 2:
        return None
    log(f"{name}: {width}x{height} LQ pixels -> {count} tiles of {restorer.tile_size} px "
        f"(overlap {restorer.tile_overlap}, {restorer.batch_size} per call)")
    return TileProgress(count, log, bar=bar)


# ----------------------------------------------------------------------------------------------- LQ inputs
def _as_written(image: np.ndarray) -> np.ndarray:
    """A [-1, 1] image as its 8-bit PNG holds it (scores are of what the user gets, resumed or not)."""
    return images.from_unit(images.to_uint8(image).astype(np.float64)[None] / 255.0).astype(np.float32)  # = read


def read_inputs(job: tuple[pathlib.Path, Optional[pathlib.Path], pathlib.Path], reference: Optional[pathlib.Path],
                sf: int) -> tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
    """(lq, mask or None, reference or None) of one job, with every check that needs no network: readable
    files, the mask's size, the reference's size (sf x the LQ) and a size SSIM can score."""
    lq, mask = read_job(job[0], job[1])
    if reference is None:
        return lq, mask, None
    ref = _read(reference, "reference")
    height, width = lq.shape[1] * sf, lq.shape[2] * sf
    if ref.shape[1:3] != (height, width):
        raise SampleError(f"reference {reference} is {ref.shape[2]}x{ref.shape[1]} but the restored {job[0].name} "
                          f"will be {width}x{height} (width x height, x{sf}); give the ground truth of this image")
    if min(height, width) < SSIM_MIN_SIZE:
        raise SampleError(f"the restored {job[0].name} will be {width}x{height}, too small to score (SSIM needs "
                          f"{SSIM_MIN_SIZE}x{SSIM_MIN_SIZE}); leave --config.reference unset for it")
    return lq, mask, ref


def _score_existing(dst: pathlib.Path, reference: Optional[pathlib.Path], scorer, log) -> Optional[dict]:
    """Scores an output kept from an earlier run (so a resumed run's metrics.json covers every image)."""
    if reference is None:
        return None
    try:
        out, ref = images.read_image(dst), images.read_image(reference)
    except (OSError, ValueError) as err:
        log(f"not scored: {' '.join(str(err).split())}")
        return None
    if out.shape != ref.shape or min(out.shape[1:3]) < SSIM_MIN_SIZE:
        log(f"not scored: the kept {dst} is {out.shape[2]}x{out.shape[1]}, its reference {reference} "
            f"{ref.shape[2]}x{ref.shape[1]}")
        return None
    return image_scores(out, ref, scorer)


def _restore_jobs(cfg, restorer, jobs, references, networks, out_dir, *, progress, log, scorer) -> tuple:
    """Restores every job (input, mask, output) not written yet; returns (files written, scores by file name,
    names of the inputs that failed in a folder run).

    Everything that can fail for an input is checked before its restoration; a single image is checked before
    the networks are loaded, and nothing is loaded when every output exists. Ctrl-C raises :class:`Interrupted`;
    every output is written atomically."""
    single = not pathlib.Path(cfg.input).is_dir()
    sf = restorer.sf
    refs = [None] * len(jobs) if references is None else references
    preloaded = {}
    if single and not (jobs[0][2].exists() and not cfg.overwrite):
        preloaded[0] = read_inputs(jobs[0], refs[0], sf)  # a bad input before the slow loading and compilation
    check_output_folder(pathlib.Path(out_dir))
    if networks is None and (cfg.overwrite or not all(dst.exists() for _, _, dst in jobs)):
        networks = load_networks(cfg)  # a rerun with every output written loads nothing
    unet_params, vq_params = networks if networks is not None else (None, None)
    written, failed, skipped, scores = [], [], [], {}
    indices: Iterable[int] = range(len(jobs))
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        indices = tqdm(indices, total=len(jobs), unit="image", file=sys.stderr, disable=len(jobs) < 2)
    on_tile = None
    try:
        for i in indices:
            src, _, dst = jobs[i]
            if dst.exists() and not cfg.overwrite:
                skipped.append(dst.name)
                kept = _score_existing(dst, refs[i], scorer, log)
                if kept is not None:
                    scores[src.name] = kept
                continue
            try:
                lq, mask, reference = preloaded.pop(i) if i in preloaded else read_inputs(jobs[i], refs[i], sf)
            except SampleError as err:
                if single:
                    raise
                failed.append(src.name)
                log(f"error: {err}")
                continue
            on_tile = tile_progress(restorer, lq.shape[1], lq.shape[2], src.name, log, progress)
            out = np.asarray(restorer(lq, unet_params, vq_params, image_key(cfg.sample.seed, src.name), mask=mask,
                                      on_tile=on_tile))
            if reference is not None:
                scores[src.name] = image_scores(_as_written(out), reference, scorer)
            written.append(images.write_png(dst, out))
    except KeyboardInterrupt:
        raise Interrupted(len(written) + len(skipped), len(jobs), pathlib.Path(out_dir).resolve()) from None
    finally:  # the bars go before any message
        if on_tile is not None:
            on_tile.close()
        if hasattr(indices, "close"):
            indices.close()
    if skipped:
        log(f"skipped {len(skipped)} existing output(s) (pass --config.overwrite=True to replace them)")
    return written, scores, failed


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
    written, scores, failed = _restore_jobs(cfg, restorer, jobs, references, networks, out_dir,
                                            progress=progress, log=log, scorer=scorer)
    if scores:  # also when some inputs failed: the scores of the others are kept
        record = {"model": cfg.get("name", ""), "seed": int(cfg.sample.seed), "reference": str(cfg.reference),
                  "images": scores}
        written.append(files.write_json(pathlib.Path(out_dir) / "metrics.json", record))
    if failed:
        raise SampleError(f"{len(failed)} input(s) failed (see the lines above): {', '.join(failed)}")
    return {"folder": pathlib.Path(out_dir).resolve(), "written": written, "scores": scores}


# ----------------------------------------------------------------------------------------------- clean input
def check_clean_image(hq_shape: tuple[int, ...], restorer: pipeline.Restorer, name: str = "the clean image") -> None:
    """One-line SampleError unless a clean image of ``hq_shape`` (1, H, W, 3) can be degraded by the restorer's
    scale factor, restored and scored (SSIM needs 11x11 pixels after the crop to a multiple of sf)."""
    sf = restorer.sf
    if sf < 2 or restorer.cond_mask:
        raise SampleError(f"model {restorer.name!r} is not a super-resolution model (sf {sf}); degrading a clean "
                          f"image needs one: give LQ images with --config.input_is_measurement=True")
    height, width = hq_shape[1] // sf * sf, hq_shape[2] // sf * sf
    if min(height, width) < max(SSIM_MIN_SIZE, sf):
        raise SampleError(f"{name} is {hq_shape[2]}x{hq_shape[1]} pixels; degrading it by x{sf} and scoring the "
                          f"result (SSIM) needs at least {max(SSIM_MIN_SIZE, sf)}x{max(SSIM_MIN_SIZE, sf)} after "
                          f"cropping to a multiple of {sf}: use a larger image, or give LQ images with "
                          f"--config.input_is_measurement=True")


def degrade_and_restore(
    hq: np.ndarray, restorer: pipeline.Restorer, networks: tuple[Any, Any], key: jax.Array,
    on_tile: Optional[Callable[[int, int], None]] = None,
) -> dict[str, Any]:
    """A clean (1, H, W, 3) image in [-1, 1] -> ``{"hq", "lq", "bicubic", "restored", "wall_time_s"}``.

    The image is cropped to a multiple of sf at the bottom/right, degraded with MATLAB bicubic x 1/sf (the
    ``bicsr`` training degradation), restored with ``restorer`` (:func:`resshift_jax.pipeline.make_restorer`)
    and up-sampled with PyTorch bicubic for the baseline (clamped to [-1, 1]). ``wall_time_s`` covers the
    restoration call (compilation included on a first call). ``on_tile``: the restorer's progress callback."""
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
    restored = np.asarray(jax.block_until_ready(restorer(lq, networks[0], networks[1], key, on_tile=on_tile)))
    wall = time.perf_counter() - start
    bicubic = np.clip(np.asarray(resize.interpolate_bicubic(lq, scale_factor=float(sf))), -1.0, 1.0)
    return {"hq": hq, "lq": lq, "bicubic": bicubic, "restored": restored, "wall_time_s": wall}


def publish_together(out_dir: pathlib.Path, write: Callable[[pathlib.Path], Iterable[str]]) -> None:
    """Runs ``write(stage)`` to write files into a hidden staging folder inside ``out_dir``, then renames them
    into ``out_dir`` in the order ``write`` returns their names (the last one marks a complete set). On any
    failure or Ctrl-C the staging folder (only ever ours) is removed and ``out_dir`` is unchanged."""
    stage = out_dir / f".staging-{uuid.uuid4().hex[:12]}.tmp"
    stage.mkdir(parents=True)
    try:
        for name in write(stage):
            os.replace(stage / name, out_dir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def restore_clean_image(
    cfg: ml_collections.ConfigDict,
    restorer: pipeline.Restorer,
    out_dir: str | os.PathLike,
    *,
    networks: Optional[tuple[Any, Any]] = None,
    scorer: Optional[scoring.Scorer] = None,
    progress: bool = False,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Degrades the clean image ``cfg.input`` (bicubic x 1/sf), restores it and writes the result files (see the
    module docstring) into ``out_dir``, which must not hold them yet; returns the metrics record.

    Every check (outputs free, image large enough, folder writable) runs before the networks are loaded; the
    six files appear together (staged, then renamed, ``metrics.json`` last) or not at all."""
    hq_path, out_dir = pathlib.Path(cfg.input), pathlib.Path(out_dir)
    if hq_path.is_dir():
        raise SampleError(f"input {hq_path} is a folder; a clean image to degrade is one file (LQ images: "
                          f"--config.input_is_measurement=True)")
    taken = [n for n in CLEAN_IMAGE_OUTPUTS if (out_dir / n).exists()]
    if taken and not cfg.overwrite:
        raise SampleError(f"{out_dir} already holds {', '.join(taken)}; choose another --config.output or pass "
                          f"--config.overwrite=True to replace them")
    hq = _read(hq_path, "image")
    check_clean_image(hq.shape, restorer, f"the clean image {hq_path}")
    check_output_folder(out_dir)
    networks = load_networks(cfg) if networks is None else networks
    on_tile = tile_progress(restorer, hq.shape[1] // restorer.sf, hq.shape[2] // restorer.sf, hq_path.name, log,
                            progress)
    try:
        res = degrade_and_restore(hq, restorer, networks, image_key(cfg.sample.seed, hq_path.name), on_tile)
    except KeyboardInterrupt:
        raise Interrupted(0, 1, out_dir.resolve()) from None
    finally:
        if on_tile is not None:
            on_tile.close()
    restored_scores = image_scores(_as_written(res["restored"]), res["hq"], scorer)
    bicubic_scores = image_scores(_as_written(res["bicubic"]), res["hq"], scorer)
    record = {
        "image": str(hq_path), "model": cfg.get("name", ""), "sf": restorer.sf,
        "degradation": "matlab_bicubic", "hq_size": list(res["hq"].shape[1:3]), "lq_size": list(res["lq"].shape[1:3]),
        "steps": int(cfg.diffusion.steps), "nfe": int(cfg.diffusion.steps), "seed": int(cfg.sample.seed),
        "restored": restored_scores, "bicubic": bicubic_scores,
        "wall_time_s": res["wall_time_s"], "folder": str(out_dir.resolve()),
        "side_by_side": ["lq", "bicubic", "restored", "reference"],
    }

    def write(stage: pathlib.Path) -> tuple[str, ...]:
        for name in ("lq", "bicubic", "restored"):
            images.write_png(stage / f"{name}.png", res[name])
        images.write_png(stage / "reference.png", res["hq"])
        images.write_png(stage / "side_by_side.png", figures.comparison([
            ("LQ input", res["lq"]), (figures.score_label("bicubic", bicubic_scores), res["bicubic"]),
            (figures.score_label("restored", restored_scores), res["restored"]), ("reference", res["hq"])]))
        files.write_json(stage / "metrics.json", record)
        return CLEAN_IMAGE_OUTPUTS

    try:
        publish_together(out_dir, write)
    except KeyboardInterrupt:
        raise Interrupted(0, 1, out_dir.resolve()) from None
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
    images are reported through ``log`` and the rest is processed, then a SampleError names them. Ctrl-C raises
    :class:`Interrupted` (how many images were finished, and where). ``progress``: tqdm bars (images, tiles) on
    stderr; ``log`` gets the notes (tile counts and time estimates, skipped outputs, unreadable inputs).

    A folder the run created (the fresh ``outputs/resshift/run-...`` or a missing ``output``) is removed again
    when the run fails or is interrupted before anything was written into it.
    """
    missing = [f for f in IO_FIELDS + ("sample",) if f not in cfg]
    if missing:
        raise SampleError(f"the config lacks {', '.join(missing)}; start from a preset (configs/resshift/*.py)")
    if not cfg.input:
        raise SampleError("no input given: pass --config.input=IMAGE_OR_FOLDER")
    if not cfg.input_is_measurement and (cfg.mask or cfg.reference):
        raise SampleError("--config.mask and --config.reference go with LQ inputs "
                          "(--config.input_is_measurement=True); a clean input is its own reference")
    if not pathlib.Path(cfg.input).exists():
        raise SampleError(f"input {cfg.input} does not exist")
    try:
        restorer = pipeline.make_restorer(cfg)
    except ValueError as err:
        raise SampleError(str(err)) from None
    if cfg.output:
        out_dir = pathlib.Path(cfg.output).expanduser()
        created = missing_folders(out_dir)
    else:
        parents = missing_folders(DEFAULT_OUTPUT_PARENT)
        out_dir = images.fresh_folder(DEFAULT_OUTPUT_PARENT)
        created = [out_dir, *parents]
    try:
        scorer = scoring.Scorer(use_lpips=bool(cfg.get("score_lpips", True)))
        if not cfg.input_is_measurement:
            record = restore_clean_image(cfg, restorer, out_dir, networks=networks, scorer=scorer,
                                         progress=progress, log=log)
            return {"folder": out_dir.resolve(), "written": [out_dir / n for n in CLEAN_IMAGE_OUTPUTS],
                    "metrics": record}
        return _restore_lq_inputs(cfg, restorer, out_dir, networks, progress=progress, log=log, scorer=scorer)
    except BaseException:
        remove_if_empty(created)
        raise


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


def _fail(message: str, code: int = 1, kind: str = "error") -> NoReturn:
    print(f"resshift_jax.sample: {kind}: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(code)


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
    compiling.tune_cpu_xla_flags()  # before JAX starts: the measured-faster XLA:CPU setting (ircore.compiling)
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
            result = restore_lq_images(flags.FLAGS.config, log=lambda msg: print(msg, file=sys.stderr, flush=True),
                                       progress=logging_utils.progress_enabled("auto", sys.stderr))  # bars: tty
        except (SampleError, OSError, ValueError) as err:
            _fail(str(err))
        except Interrupted as err:
            _fail(str(err), EXIT_INTERRUPTED, "interrupted")
        except KeyboardInterrupt:  # before the run began (loading, compiling)
            _fail("interrupted before the first image was finished; nothing was written", EXIT_INTERRUPTED,
                  "interrupted")
        print("\n".join(summary(result)))

    app.run(run, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
