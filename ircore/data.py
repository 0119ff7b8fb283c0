"""Training and validation images: TFDS ``data_source`` or image folders -> grain -> process-local batches.

Both trainers read clean (HQ) crops only: ResShift synthesises its low-quality input on the accelerator
inside the train step, the DeqIR prior is trained on the clean images themselves. So a batch here is
``{"hq": uint8 (rows, crop, crop, 3)}``.

Order and randomness depend only on the seed and the position: element ``i`` of the endless stream is image
``shuffle_epoch(i // N)[i % N]`` (grain re-shuffles every epoch) with a random crop / flip drawn from a
generator seeded by ``(seed, i)``. Global batch ``s`` is elements ``s*B .. s*B + B - 1``; a process loads only
its rows of it (:func:`ircore.mesh.local_batch_rows`). A run resumed at step ``s`` therefore sees exactly
the batches an uninterrupted run would, with any number of processes, workers or threads.

Sources (``data`` config section, see :func:`ircore.train_config.data_defaults`):

* ``source="tfds"``: ``tfds.data_source(tfds_name, split=..., data_dir=...)`` (any builder prepared in the
  ``array_record`` format; ``image_key`` names the image feature);
* ``source="folder"``: every image file below ``folder`` (recursively), or the paths listed one per line in a
  ``.txt`` file (the official ``path_train_all.txt`` style);
* ``source="photos"``: the real photographs of :mod:`ircore.photos` that ship inside installed packages,
  ``photos_split`` ``"train"`` or ``"heldout"`` (the embedded default models).

Crops (the Real-ESRGAN data set with ``rescale_gt``): a random square of side ``max(min(h, w), crop_size)``
(reflect-padded when the image is smaller), area-resized to ``crop_size``; random horizontal flip. With
``random_scale`` the side is drawn log-uniformly between ``crop_size`` and ``max(min(h, w), crop_size)``, so a
few photos give crops at every scale from native pixels to the whole (shrunk) picture; ``native_fraction`` of
those crops are instead taken at native pixels (side ``crop_size``), the scale of full-size photos at test time.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np
from PIL import Image

from ircore import images, photos

EMBEDDED_FIX = "pip install -e '.[embedded]'"


class DataError(ValueError):
    """A training / validation data problem the user fixes (empty folder, unreadable image, missing extra);
    the message is one line naming the problem and the fix."""


# ----------------------------------------------------------------------------------------------- sources
def _to_rgb_uint8(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"expected an HWC image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"expected 8-bit images from the data source, got dtype {arr.dtype}")
        arr = (arr.astype(np.float64) * 255.0 / np.iinfo(arr.dtype).max).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.shape[-1] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got {arr.shape[-1]}")
    return arr


class ImageFileSource:
    """Random-access source over image files: ``source[i] = {"image": uint8 (H, W, 3)}`` (picklable)."""

    def __init__(self, files: Sequence[str]):
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        try:
            with Image.open(path) as im:
                return {"image": _to_rgb_uint8(np.asarray(im.convert("RGB")))}
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            detail = " ".join(str(err).split())
            raise DataError(f"cannot read training image {path} ({detail}): replace or remove the file, or "
                            f"leave it out of data.folder") from None

    def __repr__(self) -> str:
        return f"ImageFileSource({len(self.files)} files)"


class InMemorySource:
    """Random-access source over decoded images held in memory: ``source[i] = {"image": uint8 (H, W, 3)}``
    (for a few photos that would otherwise be decoded again for every crop)."""

    def __init__(self, images: Sequence[np.ndarray]):
        self.images = [_to_rgb_uint8(im) for im in images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index]}

    def __repr__(self) -> str:
        return f"InMemorySource({len(self.images)} images)"


class _FeatureSource:
    """Keeps only the image feature of a TFDS record (picklable, so grain workers can use it)."""

    def __init__(self, source: Any, image_key: str):
        self.source = source
        self.image_key = image_key

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        record = self.source[index]
        if self.image_key not in record:
            raise DataError(f"TFDS record has no feature {self.image_key!r}; it has {sorted(record)}: set "
                            f"--config.data.image_key")
        return {"image": _to_rgb_uint8(record[self.image_key])}


def _folder_source(folder: str, section: str = "data") -> ImageFileSource:
    """:class:`ImageFileSource` over the images of ``folder`` (or a ``.txt`` list); :class:`DataError` if none.
    ``section``: the config section named in messages (``data`` or ``data.eval``)."""
    if not str(folder):
        raise DataError(f"no images given: set --config.{section}.folder=DIR (a folder of images or a .txt "
                        f"list of image paths)")
    try:
        files = images.list_images(folder, recursive=True)
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"{err}: point --config.{section}.folder at a folder of images (.png, .jpg, ...) or a "
                        f".txt list of image paths") from None
    except OSError as err:
        raise DataError(f"cannot list the image folder {folder} ({err.strerror}): check its permissions") from None
    return ImageFileSource([str(p) for p in files])


def _photo_source(split: str) -> InMemorySource:
    """The package photographs of ``split``; :class:`DataError` naming the extra when it is not installed."""
    if split not in photos.SPLITS:
        raise DataError(f"data.photos_split must be one of {sorted(photos.SPLITS)}, got {split!r}")
    try:
        return InMemorySource([photos.load(name) for name in photos.SPLITS[split]])
    except ModuleNotFoundError:
        raise DataError(f"data.source='photos' reads the photographs shipped with scikit-image, scikit-learn and PyWavelets, "
                        f"which are not installed: {EMBEDDED_FIX}, or train on your own images with "
                        f"--config.data.source=folder --config.data.folder=DIR") from None
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read the package photographs ({' '.join(str(err).split())}): reinstall the "
                        f"embedded extra with {EMBEDDED_FIX}") from None


def open_source(cfg: Any, section: str = "data") -> Any:
    """The random-access source described by a ``data`` (or ``data.eval``) config section; problems the user
    fixes raise :class:`DataError` (naming the flags of ``section``)."""
    kind = cfg.source
    if kind == "folder":
        return _folder_source(cfg.folder, section)
    if kind == "tfds":
        import tensorflow_datasets as tfds  # noqa: PLC0415 (heavy import, only when used)

        if not cfg.tfds_name:
            raise DataError(f"{section}.tfds_name is not set: pass --config.{section}.tfds_name=NAME")
        try:
            source = tfds.data_source(cfg.tfds_name, split=cfg.tfds_split, data_dir=cfg.tfds_data_dir,
                                      download=False)
        except Exception as err:  # noqa: BLE001 (tfds raises many kinds; give one clear message)
            first = " ".join(str(err).split())[:300]
            raise DataError(f"cannot open TFDS data set {cfg.tfds_name!r} split {cfg.tfds_split!r} in "
                            f"{cfg.tfds_data_dir or 'the default data_dir'}: {first}") from None
        return _FeatureSource(source, cfg.image_key)
    if kind == "photos":
        return _photo_source(cfg.get("photos_split", "train"))
    raise DataError(f"{section}.source must be 'folder', 'tfds' or 'photos', got {kind!r}")


def check_source(source: Any) -> None:
    """Reads the first element of ``source``, so that an empty source or one whose images cannot be decoded
    fails (:class:`DataError`) before training writes anything."""
    if len(source) == 0:
        raise DataError("the training data source is empty: point --config.data.folder at a folder of images")
    source[0]


def open_training_source(cfg: Any) -> Any:
    """:func:`open_source` of a ``data`` section, checked by :func:`check_source` (open it before building
    anything, so a data problem is reported at once)."""
    source = open_source(cfg)
    check_source(source)
    return source


# ----------------------------------------------------------------------------------------------- crops
def _area_resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BOX))


def random_crop(image: np.ndarray, rng: np.random.Generator, *, crop_size: int, rescale: bool = True,
                hflip: bool = True, random_scale: bool = False, native_fraction: float = 0.0) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (crop_size, crop_size, 3): reflect-pad if small, random square crop (side
    ``max(min(h, w), crop_size)`` if ``rescale`` else ``crop_size``; with ``random_scale`` too, a side drawn
    log-uniformly between ``crop_size`` and that, or with probability ``native_fraction`` side ``crop_size``),
    area resize, random horizontal flip."""
    if not 0.0 <= native_fraction <= 1.0:
        raise ValueError(f"native_fraction must be in [0, 1], got {native_fraction}")
    side = max(min(image.shape[:2]), crop_size) if rescale else crop_size
    if rescale and random_scale and side > crop_size:
        if native_fraction > 0.0 and rng.random() < native_fraction:
            side = crop_size
        else:
            side = int(round(crop_size * (side / crop_size) ** rng.random()))
    pad_h, pad_w = max(side - image.shape[0], 0), max(side - image.shape[1], 0)
    if pad_h or pad_w:
        mode = "reflect" if pad_h < image.shape[0] and pad_w < image.shape[1] else "symmetric"
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)
    top = int(rng.integers(0, image.shape[0] - side + 1))
    left = int(rng.integers(0, image.shape[1] - side + 1))
    out = _area_resize(np.ascontiguousarray(image[top:top + side, left:left + side]), crop_size)
    if hflip and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def center_crop(image: np.ndarray, crop_size: int) -> np.ndarray:
    """Deterministic crop for validation: centre square of side ``min(h, w)``, area-resized to ``crop_size``."""
    side = min(image.shape[:2])
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    if side < crop_size:
        raise DataError(f"validation image of size {image.shape[:2]} is smaller than crop_size {crop_size}: use "
                        f"larger held-out images or a smaller --config.data.crop_size")
    return _area_resize(np.ascontiguousarray(image[top:top + side, left:left + side]), crop_size)


class _Crop:
    """grain random map: (element, rng) -> crop (picklable)."""

    def __init__(self, crop_size: int, rescale: bool, hflip: bool, random_scale: bool = False,
                 native_fraction: float = 0.0):
        self.crop_size, self.rescale, self.hflip, self.random_scale = crop_size, rescale, hflip, random_scale
        self.native_fraction = native_fraction

    def __call__(self, element: dict, rng: np.random.Generator) -> np.ndarray:
        return random_crop(element["image"], rng, crop_size=self.crop_size, rescale=self.rescale, hflip=self.hflip,
                           random_scale=self.random_scale, native_fraction=self.native_fraction)


class _GatherRows:
    """step -> {"hq": stack of elements step*B + r for r in rows} (picklable for worker processes)."""

    def __init__(self, elements: Any, global_batch: int, rows: tuple[int, int]):
        self.elements, self.global_batch, self.rows = elements, global_batch, rows

    def __call__(self, step: int) -> dict:
        base = int(step) * self.global_batch
        return {"hq": np.stack([self.elements[base + r] for r in range(*self.rows)])}


# ----------------------------------------------------------------------------------------------- pipelines
def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app nobody has parsed them."""
    from absl import flags  # noqa: PLC0415

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def element_stream(source: Any, cfg: Any, seed: int) -> Any:
    """The endless, per-epoch shuffled stream of random HQ crops (a ``grain.MapDataset``, random access)."""
    if len(source) == 0:
        raise DataError("the training data source is empty: point --config.data.folder at a folder of images")
    return (grain.MapDataset.source(source).seed(int(seed)).shuffle().repeat(None)
            .random_map(_Crop(int(cfg.crop_size), bool(cfg.rescale), bool(cfg.hflip),
                              bool(cfg.get("random_scale", False)), float(cfg.get("native_fraction", 0.0)))))


def make_train_batches(
    cfg: Any, *, seed: int, global_batch: int, rows: tuple[int, int], source: Any = None,
) -> Callable[[int], Iterator[dict]]:
    """``batches(start_step)`` -> iterator of ``{"hq": uint8 (rows[1] - rows[0], crop, crop, 3)}``.

    ``rows`` is this process's slice of the global batch. Uses ``cfg.num_workers`` grain worker processes,
    ``cfg.num_threads`` reader threads and a ``cfg.prefetch``-batch buffer.
    """
    if not 0 <= rows[0] < rows[1] <= global_batch:
        raise ValueError(f"rows {rows} are not a slice of a global batch of {global_batch}")
    source = open_source(cfg) if source is None else source
    check_source(source)
    elements = element_stream(source, cfg, seed)
    gather = _GatherRows(elements, int(global_batch), (int(rows[0]), int(rows[1])))

    def batches(start_step: int) -> Iterator[dict]:
        steps = grain.MapDataset.range(int(start_step), 2**62).map(gather)
        ds = steps.to_iter_dataset(grain.ReadOptions(num_threads=max(int(cfg.num_threads), 1),
                                                     prefetch_buffer_size=max(int(cfg.prefetch), 1)))
        if int(cfg.num_workers) > 0:
            _ensure_absl_flags_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(cfg.num_workers),
                                                             per_worker_buffer_size=max(int(cfg.prefetch), 1)))
        return iter(ds)

    return batches


def load_eval_images(cfg: Any, crop_size: int) -> np.ndarray:
    """The first ``cfg.num_images`` images of the held-out source, centre-cropped: uint8 (N, crop, crop, 3)."""
    source = open_source(cfg, "data.eval")
    n = min(int(cfg.num_images), len(source))
    if n == 0:
        raise DataError("the validation data source is empty: set --config.data.eval.folder to held-out images")
    return np.stack([center_crop(source[i]["image"], crop_size) for i in range(n)])


def hq_to_float(hq: Any) -> Any:
    """uint8 images -> float32 in [-1, 1] (numpy or jax)."""
    return hq.astype("float32") / 127.5 - 1.0
