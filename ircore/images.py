"""Image files <-> float32 NHWC arrays in [-1, 1] (Pillow only).

Reading (:func:`read_image`) gives a (1, H, W, 3) float32 RGB array in [-1, 1] for PNG, JPEG, WebP, TIFF and
BMP files:

* 8-bit samples are divided by 255, 16-bit samples (16-bit PNG and TIFF: gray, gray+alpha, RGB, RGBA) by
  65535. Pillow itself keeps only 16-bit gray; for 16-bit colour it would drop the low byte, so those files
  are decoded twice with byte-swapped raw modes and the two bytes are recombined (full 16-bit precision).
* Gray (and bilevel) images are repeated into three equal channels; palette images are expanded.
* Alpha: ``alpha="drop"`` (default) ignores it, which is what the official loaders do
  (``PIL.Image.convert("RGB")``); ``alpha="composite"`` blends over a constant ``background`` in [0, 1]
  (white by default): ``rgb * a + background * (1 - a)``.

Writing (:func:`write_png`) quantises like the official ``torchvision.utils.save_image`` of
``clamp((x + 1) / 2, 0, 1)``: ``floor(v * 255 + 0.5)`` in float32 with clipping only at that final step, and
writes atomically through :mod:`ircore.files` (a temporary file in the same folder, then a rename).
"""
from __future__ import annotations

import os
import pathlib
import sys
import io
import warnings
from typing import Any, Iterable, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from ircore import files

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")

# 16-bit colour raw modes -> the raw mode that reads the other byte of every sample.
_NATIVE = "L" if sys.byteorder == "little" else "B"
_BYTE_SWAP = {
    "RGB;16B": "RGB;16L",
    "RGB;16L": "RGB;16B",
    "RGB;16N": "RGB;16B" if _NATIVE == "L" else "RGB;16L",
    "RGBA;16B": "RGBA;16L",
    "RGBA;16L": "RGBA;16B",
    "RGBA;16N": "RGBA;16B" if _NATIVE == "L" else "RGBA;16L",
}
_SIXTEEN_BIT_GRAY = ("I;16", "I;16L", "I;16B", "I;16N")


# ----------------------------------------------------------------------------------------------- ranges
def to_unit(x: Any) -> Any:
    """[-1, 1] -> [0, 1] (no clipping); numpy or jax arrays."""
    return (x + 1.0) / 2.0


def from_unit(x: Any) -> Any:
    """[0, 1] -> [-1, 1] (no clipping); numpy or jax arrays."""
    return x * 2.0 - 1.0


# ----------------------------------------------------------------------------------------------- reading
def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _tile_rawmode(im: Image.Image) -> str | None:
    tiles = getattr(im, "tile", None) or []
    modes = set()
    for tile in tiles:
        args = tile.args if hasattr(tile, "args") else tile[3]
        modes.add(args if isinstance(args, str) else (args[0] if args and isinstance(args[0], str) else None))
    return modes.pop() if len(modes) == 1 else None


def _with_rawmode(args: Any, rawmode: str) -> Any:
    if isinstance(args, str):
        return rawmode
    return (rawmode, *args[1:])


def _decode_as(path: pathlib.Path, rawmode: str) -> np.ndarray:
    """Decodes ``path`` with every tile's raw mode replaced (same bits per pixel, other byte layout)."""
    with Image.open(path) as im:
        im.tile = [tile._replace(args=_with_rawmode(tile.args, rawmode)) for tile in im.tile]
        im.load()
        return np.array(im)


def _read_sixteen_bit_colour(path: pathlib.Path, rawmode: str) -> np.ndarray:
    """(H, W, C) float64 in [0, 1] from a 16-bit RGB(A) or gray+alpha file, all 16 bits kept."""
    if rawmode == "LA;16B":
        # 32 bits per pixel: reading them as 8-bit RGBA yields L_hi, L_lo, A_hi, A_lo.
        raw = _decode_as(path, "RGBA").astype(np.uint32)
        gray = raw[..., 0] * 256 + raw[..., 1]
        alpha = raw[..., 2] * 256 + raw[..., 3]
        return np.stack([gray, alpha], axis=-1) / 65535.0
    high = _decode_as(path, rawmode).astype(np.uint32)  # each unpacker keeps the most significant byte
    low = _decode_as(path, _BYTE_SWAP[rawmode]).astype(np.uint32)
    return (high * 256 + low) / 65535.0


def _pixels(im: Image.Image, path: pathlib.Path) -> np.ndarray:
    """(H, W, C) float64 in [0, 1] with C = 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA)."""
    mode = im.mode
    if mode in _SIXTEEN_BIT_GRAY:
        return np.asarray(im).astype(np.float64)[..., None] / 65535.0
    if mode == "I":
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"cannot read image {path}: 32-bit integer samples outside 0..65535")
        return arr.astype(np.float64)[..., None] / 65535.0
    if mode == "F":
        raise ValueError(f"cannot read image {path}: floating-point images (mode F) are not supported")
    if mode == "1":
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("LA", "La", "PA"):
        im = im.convert("LA")
    elif mode in ("RGBA", "RGBa"):
        im = im.convert("RGBA")
    elif mode not in ("L", "RGB"):
        im = im.convert("RGB")
    arr = np.asarray(im).astype(np.float64) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


# EXIF orientation tag (0x0112) value -> the array transform that shows the photo upright (as
# PIL.ImageOps.exif_transpose does), applied to (H, W, C) pixels of any bit depth.
_ORIENTATION = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation of an opened image (1 = upright, also when there is no or a broken EXIF block)."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not make the pixels unreadable
        return 1
    return value if value in _ORIENTATION else 1


def read_image(
    path: str | os.PathLike,
    *,
    alpha: Literal["drop", "composite"] = "drop",
    background: float = 1.0,
) -> np.ndarray:
    """Reads an image file into a (1, H, W, 3) float32 RGB array in [-1, 1], upright (EXIF orientation applied,
    as a phone camera's portrait photo needs).

    Args:
      path: PNG, JPEG, WebP, TIFF or BMP file (first frame of multi-frame files).
      alpha: ``"drop"`` ignores transparency (as ``PIL.Image.convert("RGB")``); ``"composite"`` blends over
        ``background``.
      background: composite background intensity in [0, 1] (1 = white).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: not a readable image (unknown format, truncated, unsupported sample type) or bad options.
    """
    if alpha not in ("drop", "composite"):
        raise ValueError(f"alpha must be 'drop' or 'composite', got {alpha!r}")
    if not 0.0 <= background <= 1.0:
        raise ValueError(f"background must be in [0, 1], got {background}")
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"image path {path} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                rawmode = _tile_rawmode(im)
                if rawmode in _BYTE_SWAP or (rawmode == "LA;16B" and im.mode == "RGBA"):
                    pixels = _read_sixteen_bit_colour(path, rawmode)
                else:
                    im.load()
                    pixels = _pixels(im, path)
                orientation = _orientation(im)
    except ValueError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, KeyError) as err:
        raise ValueError(f"cannot read image {path}: {_one_line(err)}") from None

    if orientation != 1:
        pixels = np.ascontiguousarray(_ORIENTATION[orientation](pixels))
    channels = pixels.shape[-1]
    has_alpha = channels in (2, 4)
    colour = pixels[..., : channels - 1] if has_alpha else pixels
    if has_alpha and alpha == "composite":
        a = pixels[..., -1:]
        colour = colour * a + background * (1.0 - a)
    if colour.shape[-1] == 1:
        colour = np.repeat(colour, 3, axis=-1)
    return from_unit(colour[None]).astype(np.float32)


def list_images(
    location: str | os.PathLike, extensions: Iterable[str] = IMAGE_EXTENSIONS, *, recursive: bool = False
) -> list[pathlib.Path]:
    """Image files of a folder, sorted by path, or the files a ``.txt`` list names (one a line, ``#`` comments,
    relative to the list's folder), in the list's order.

    Folders: directly inside (``recursive=False``) or anywhere below it; extension case-insensitive; hidden
    files skipped. Raises ``FileNotFoundError`` for a missing location, ``ValueError`` for an unset location, a
    file that is not a ``.txt`` list, or no images.
    """
    if not str(location):
        raise ValueError("no image folder given (an empty path)")
    path = pathlib.Path(location).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image folder or list {path} does not exist")
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    if path.is_file():
        if path.suffix.lower() != ".txt":
            raise ValueError(f"{path} is neither a folder nor a .txt list of image paths")
        files = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                entry = pathlib.Path(line).expanduser()
                files.append(entry if entry.is_absolute() else path.parent / entry)
    else:
        found = path.rglob("*") if recursive else path.iterdir()
        files = sorted((p for p in found if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts),
                       key=lambda p: p.relative_to(path).parts)
    if not files:
        raise ValueError(f"no images ({', '.join(exts)}) in {path}")
    return files


# ----------------------------------------------------------------------------------------------- writing
def to_uint8(img: Any) -> np.ndarray:
    """[-1, 1] image (H, W, C), (1, H, W, C) or (H, W) -> uint8 (H, W, C) / (H, W).

    ``floor(clamp((x + 1) / 2, 0, 1) * 255 + 0.5)`` in float32: round half up, as the official
    ``torchvision.utils.save_image`` pipeline; clipping happens only here.
    """
    arr = np.asarray(img)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"expected a float image in [-1, 1], got dtype {arr.dtype}")
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"expected a single image, got a batch of {arr.shape[0]} (shape {arr.shape})")
        arr = arr[0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3)):
        raise ValueError(
            f"expected an image of shape (H, W, 3), (H, W, 1), (H, W) or (1, H, W, C), got {np.shape(img)}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("image contains NaN or infinite values")
    unit = np.clip((arr.astype(np.float32) + np.float32(1.0)) / np.float32(2.0), 0.0, 1.0)
    return np.floor(unit * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)


def write_png(path: str | os.PathLike, img: Any) -> pathlib.Path:
    """Writes a [-1, 1] image ((H, W, 3), (1, H, W, 3), gray (H, W[, 1])) as an 8-bit PNG, atomically.

    The parent folder is created if needed. Returns the path written.
    """
    path = pathlib.Path(path)
    pixels = to_uint8(img)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="PNG")
    return files.write_bytes(path, encoded.getvalue())


# ----------------------------------------------------------------------------------------------- results
def side_by_side(panels: Iterable[Any], gap: int = 4) -> np.ndarray:
    """[-1, 1] images (H_i, W_i, 3) or (1, H_i, W_i, 3) -> one (max H, sum W + gaps, 3) image, left to right,
    each panel scaled up by an integer factor (nearest neighbour) to the tallest height when that fits exactly,
    on a white background (a smaller panel is centred vertically)."""
    arrays = []
    for p in panels:
        a = np.asarray(p, np.float32)
        a = a[0] if a.ndim == 4 else a
        if a.ndim != 3 or a.shape[-1] != 3:
            raise ValueError(f"side_by_side panels must be RGB images, got shape {np.shape(p)}")
        arrays.append(a)
    if not arrays:
        raise ValueError("side_by_side needs at least one panel")
    height = max(a.shape[0] for a in arrays)
    scaled = []
    for a in arrays:
        k = height // a.shape[0]
        if k > 1 and a.shape[0] * k == height:
            a = np.repeat(np.repeat(a, k, axis=0), k, axis=1)
        scaled.append(a)
    width = sum(a.shape[1] for a in scaled) + gap * (len(scaled) - 1)
    canvas = np.ones((height, width, 3), np.float32)
    left = 0
    for a in scaled:
        top = (height - a.shape[0]) // 2
        canvas[top:top + a.shape[0], left:left + a.shape[1]] = a
        left += a.shape[1] + gap
    return canvas


def fresh_folder(parent: str | os.PathLike, prefix: str = "run") -> pathlib.Path:
    """Creates and returns a new, empty folder ``parent/<prefix>-YYYYmmdd-HHMMSS`` (``-2``, ``-3`` ... appended
    when that name is taken), so a run never writes over an earlier one."""
    import time  # noqa: PLC0415

    parent = pathlib.Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 10_000):
        folder = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"no free run folder name {stem}-N under {parent}")
