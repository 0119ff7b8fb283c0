"""ircore.images: reading every supported format / bit depth, PNG writing, folder listing, errors."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import skimage.data
import tifffile
import torch
from PIL import Image, ImageOps

from ircore import images


# ----------------------------------------------------------------------------------------------- helpers
def _unit_to_signed(u: np.ndarray) -> np.ndarray:
    return (u.astype(np.float64) * 2.0 - 1.0).astype(np.float32)


def _expected8(rgb_uint8: np.ndarray) -> np.ndarray:
    rgb = rgb_uint8 if rgb_uint8.ndim == 3 else np.repeat(rgb_uint8[..., None], 3, axis=-1)
    return _unit_to_signed(rgb / 255.0)[None]


def _expected16(rgb_uint16: np.ndarray) -> np.ndarray:
    rgb = rgb_uint16 if rgb_uint16.ndim == 3 else np.repeat(rgb_uint16[..., None], 3, axis=-1)
    return _unit_to_signed(rgb / 65535.0)[None]


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def write_png16(path, arr: np.ndarray) -> None:
    """Minimal 16-bit PNG encoder (Pillow cannot write 16-bit colour); rows cycle through all 5 filters."""
    arr = np.asarray(arr, np.uint16)
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    colour_type, bpp = {1: 0, 2: 4, 3: 2, 4: 6}[c], 2 * c
    rows = arr.reshape(h, -1).astype(">u2").view(np.uint8).reshape(h, w * bpp).astype(np.int64)
    encoded = []
    for i in range(h):
        x = rows[i]
        up = rows[i - 1] if i else np.zeros_like(x)
        left = np.concatenate([np.zeros(bpp, np.int64), x[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int64), up[:-bpp]])
        kind = i % 5
        pred = [np.zeros_like(x), left, up, (left + up) // 2, _paeth(left, up, up_left)][kind]
        encoded.append(bytes([kind]) + ((x - pred) % 256).astype(np.uint8).tobytes())

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(encoded)))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def photos():
    astronaut = skimage.data.astronaut()[::4, ::4].copy()  # 128x128 RGB
    coffee = skimage.data.coffee()[::4, ::4].copy()  # 100x150 RGB, not square
    camera = skimage.data.camera()[::4, ::4].copy()  # 128x128 gray
    return {"astronaut": astronaut, "coffee": coffee, "camera": camera}


def _deep(photo_uint8: np.ndarray, seed: int) -> np.ndarray:
    """A 16-bit version of a photo whose low byte is random, so 8-bit truncation would be caught."""
    low = np.random.default_rng(seed).integers(0, 256, photo_uint8.shape)
    return (photo_uint8.astype(np.uint16) * 256 + low).astype(np.uint16)


# ----------------------------------------------------------------------------------------------- 8-bit
@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
@pytest.mark.parametrize("ext", ["png", "tif", "bmp", "webp"])
def test_lossless_8bit_round_trip(tmp_path, photos, name, ext):
    photo = photos[name]
    path = tmp_path / f"{name}.{ext}"
    kwargs = {"lossless": True} if ext == "webp" else {}
    Image.fromarray(photo).save(path, **kwargs)
    img = images.read_image(path)
    assert img.shape == (1, *photo.shape[:2], 3) and img.dtype == np.float32
    expected = _expected8(photo)
    if ext == "webp" and photo.ndim == 2:
        # WebP stores gray photos as RGB; Pillow decodes them back to three equal channels.
        expected = _expected8(np.asarray(Image.open(path).convert("RGB")))
    np.testing.assert_array_equal(img, expected)
    # write back and read again: identical pixels
    out = images.write_png(tmp_path / f"back_{name}_{ext}.png", img)
    np.testing.assert_array_equal(images.read_image(out), expected)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
def test_jpeg_matches_pillow_decoder(tmp_path, photos, name):
    photo = photos[name]
    path = tmp_path / f"{name}.jpg"
    Image.fromarray(photo).save(path, quality=95, subsampling=0)
    img = images.read_image(path)
    decoded = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(img, _expected8(decoded))
    # and the JPEG is still the photo (quality 95, 4:4:4): mean abs error below 4 grey levels (aliased 1/4 photo)
    reference = photo if photo.ndim == 3 else np.repeat(photo[..., None], 3, axis=-1)
    assert np.abs(images.to_uint8(img).astype(float) - reference).mean() < 4.0


def test_lossy_webp_reads(tmp_path, photos):
    path = tmp_path / "a.webp"
    Image.fromarray(photos["astronaut"]).save(path, quality=90)
    img = images.read_image(path)
    np.testing.assert_array_equal(img, _expected8(np.asarray(Image.open(path).convert("RGB"))))


# ----------------------------------------------------------------------------------------------- 16-bit
def test_16bit_gray_png_and_tiff_via_pillow(tmp_path, photos):
    deep = _deep(photos["camera"], seed=1)
    for name in ("g16.png", "g16.tif"):
        Image.fromarray(deep).save(tmp_path / name)
        img = images.read_image(tmp_path / name)
        np.testing.assert_array_equal(img, _expected16(deep))


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
def test_16bit_png_every_colour_type(tmp_path, photos, name):
    photo = photos[name]
    deep = _deep(photo, seed=2)
    path = tmp_path / "deep.png"
    write_png16(path, deep)
    np.testing.assert_array_equal(images.read_image(path), _expected16(deep))
    # with an alpha channel (RGBA or gray+alpha): dropped by default, exact in all 16 bits
    alpha = _deep(np.linspace(0, 255, photo.shape[1]).astype(np.uint8)[None].repeat(photo.shape[0], 0), 3)
    with_alpha = np.concatenate([deep if deep.ndim == 3 else deep[..., None], alpha[..., None]], axis=-1)
    write_png16(path, with_alpha)
    np.testing.assert_array_equal(images.read_image(path), _expected16(deep))
    composite = images.read_image(path, alpha="composite", background=0.0)
    a = (alpha / 65535.0)[..., None]
    colour = (deep if deep.ndim == 3 else np.repeat(deep[..., None], 3, -1)) / 65535.0
    np.testing.assert_allclose(composite[0], _unit_to_signed(colour * a), atol=1e-6)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_16bit_rgb_tiff(tmp_path, photos, compression, byteorder):
    deep = _deep(photos["coffee"], seed=4)
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, deep, compression=compression, byteorder=byteorder, photometric="rgb")
    np.testing.assert_array_equal(images.read_image(path), _expected16(deep))


# ----------------------------------------------------------------------------------------------- palette, alpha, bilevel
def test_palette_images(tmp_path, photos):
    quantised = Image.fromarray(photos["astronaut"]).quantize(colors=64)
    path = tmp_path / "pal.png"
    quantised.save(path)
    assert Image.open(path).mode == "P"
    expected = np.asarray(quantised.convert("RGB"))
    np.testing.assert_array_equal(images.read_image(path), _expected8(expected))
    # palette with a transparent entry: drop keeps the palette colour, composite blends to the background
    index = int(np.asarray(quantised)[0, 0])
    quantised.save(path, transparency=index)
    dropped = images.read_image(path)
    np.testing.assert_array_equal(dropped, _expected8(expected))
    comp = images.read_image(path, alpha="composite", background=1.0)
    transparent = np.asarray(quantised) == index
    assert np.all(comp[0][transparent] == 1.0)
    np.testing.assert_array_equal(comp[0][~transparent], _expected8(expected)[0][~transparent])


def test_rgba_drop_and_composite(tmp_path, photos):
    rgb = photos["astronaut"]
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).round().astype(np.uint8), (rgb.shape[0], 1))
    path = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    np.testing.assert_array_equal(images.read_image(path), _expected8(rgb))
    comp = images.read_image(path, alpha="composite")  # white background
    a = alpha[..., None] / 255.0
    np.testing.assert_allclose(comp[0], _unit_to_signed(rgb / 255.0 * a + (1 - a)), atol=1e-6)
    gray = tmp_path / "la.png"
    Image.fromarray(np.dstack([photos["camera"], alpha[: photos["camera"].shape[0]]]), "LA").save(gray)
    np.testing.assert_array_equal(images.read_image(gray), _expected8(photos["camera"]))


def test_bilevel(tmp_path, photos):
    path = tmp_path / "bw.png"
    Image.fromarray(photos["camera"] > 128).save(path)
    img = images.read_image(path)
    np.testing.assert_array_equal(img[0, ..., 0], np.where(photos["camera"] > 128, 1.0, -1.0))
    assert np.all(img[..., 0] == img[..., 2])


# ----------------------------------------------------------------------------------------------- errors
def _assert_one_line(err: pytest.ExceptionInfo, *words: str) -> None:
    text = str(err.value)
    assert "\n" not in text
    for word in words:
        assert word in text, text


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_does(tmp_path, photos, orientation):
    upright_ref = photos["coffee"]  # not square, so a missed rotation changes the shape
    im = Image.fromarray(upright_ref)
    exif = im.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    im.save(path, exif=exif.tobytes())
    with Image.open(path) as opened:
        expected = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    got = images.read_image(path)
    assert got.shape == (1, *expected.shape)
    np.testing.assert_array_equal(got, _expected8(expected))
    if orientation in (5, 6, 7, 8):
        assert got.shape[1:3] == upright_ref.shape[1::-1]  # width and height swap


def test_exif_orientation_of_a_16bit_photo(tmp_path, photos):
    deep = _deep(photos["astronaut"], seed=3)
    im = Image.fromarray(deep[..., 0])  # 16-bit gray ("I;16")
    exif = im.getexif()
    exif[0x0112] = 6  # the camera was turned clockwise: rotate 90 degrees clockwise to show it upright
    path = tmp_path / "deep.png"
    im.save(path, exif=exif.tobytes())
    np.testing.assert_array_equal(images.read_image(path), _expected16(np.rot90(deep[..., 0], -1)))


def test_read_errors(tmp_path, photos):
    with pytest.raises(FileNotFoundError) as err:
        images.read_image(tmp_path / "nope.png")
    _assert_one_line(err, "nope.png", "does not exist")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ValueError) as err:
        images.read_image(garbage)
    _assert_one_line(err, "garbage.png", "cannot read image")
    good = tmp_path / "good.png"
    Image.fromarray(photos["astronaut"]).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError) as err:
        images.read_image(truncated)
    _assert_one_line(err, "truncated.png", "cannot read image")
    jpeg = tmp_path / "t.jpg"
    Image.fromarray(photos["astronaut"]).save(jpeg)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg.read_bytes()[:200])
    with pytest.raises(ValueError) as err:
        images.read_image(cut)
    _assert_one_line(err, "cut.jpg")
    with pytest.raises(ValueError) as err:
        images.read_image(tmp_path)
    _assert_one_line(err, "not a file")
    with pytest.raises(ValueError, match="alpha must be"):
        images.read_image(good, alpha="keep")


def test_list_images(tmp_path, photos):
    with pytest.raises(FileNotFoundError) as err:
        images.list_images(tmp_path / "missing")
    _assert_one_line(err, "missing", "does not exist")
    with pytest.raises(ValueError) as err:
        images.list_images(tmp_path)
    _assert_one_line(err, "no images", str(tmp_path))
    for name in ["b.png", "a.JPG", "c.tiff", "10.webp", "2.bmp"]:
        Image.fromarray(photos["camera"]).save(tmp_path / name, format={"JPG": "JPEG"}.get(name[-3:], None))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in images.list_images(tmp_path)] == ["10.webp", "2.bmp", "a.JPG", "b.png", "c.tiff"]
    assert [p.name for p in images.list_images(tmp_path, extensions=("png",))] == ["b.png"]
    with pytest.raises(ValueError) as err:
        images.list_images(tmp_path / "b.png")
    _assert_one_line(err, "neither a folder nor a .txt list")
    (tmp_path / "deeper").mkdir()
    Image.fromarray(photos["camera"]).save(tmp_path / "deeper" / "0.png")
    assert [p.name for p in images.list_images(tmp_path)][0] == "10.webp"  # not recursive by default
    below = images.list_images(tmp_path, recursive=True)
    assert [str(p.relative_to(tmp_path)) for p in below] == ["10.webp", "2.bmp", "a.JPG", "b.png", "c.tiff",
                                                             "deeper/0.png"]
    listing = tmp_path / "deeper" / "list.txt"
    listing.write_text("# comment\n0.png\n" + str(tmp_path / "b.png") + "\n")
    assert images.list_images(listing) == [tmp_path / "deeper" / "0.png", tmp_path / "b.png"]
    with pytest.raises(ValueError) as err:
        images.list_images("")
    _assert_one_line(err, "no image folder given")


# ----------------------------------------------------------------------------------------------- writing
def test_quantisation_matches_official_save_image():
    rng = np.random.default_rng(0)
    k = np.arange(256, dtype=np.float64)
    near_half = np.concatenate([(k + 0.5) / 255.0, (k + 0.5) / 255.0 + 1e-7, (k + 0.5) / 255.0 - 1e-7]) * 2 - 1
    x = np.concatenate([rng.uniform(-1.3, 1.3, 4000), near_half]).astype(np.float32)
    x = x[: (x.size // 3) * 3].reshape(1, -1, 1, 3)
    ours = images.to_uint8(x)
    t = torch.from_numpy(x[0])
    # torchvision.utils.save_image after DeqIR/DDNM's inverse_data_transform (clamp((x + 1) / 2, 0, 1))
    official = torch.clamp((t + 1.0) / 2.0, 0.0, 1.0).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(ours, official)
    assert images.to_uint8(np.array([[-1.5, 1.5, 0.0]], np.float32)).tolist() == [[0, 255, 128]]


def test_write_png_shapes_and_errors(tmp_path, photos):
    img = images.read_image(_save(tmp_path, photos["astronaut"]))
    for arr in (img, img[0]):
        out = images.write_png(tmp_path / "sub" / "dir" / "o.png", arr)
        np.testing.assert_array_equal(np.asarray(Image.open(out)), photos["astronaut"])
    gray = images.write_png(tmp_path / "g.png", img[0, ..., 0])
    assert Image.open(gray).mode == "L"
    bad = [
        (np.concatenate([img, img]), "batch of 2"),
        (np.zeros((8, 8, 4), np.float32), "expected an image of shape"),
        (np.zeros((8,), np.float32), "expected an image of shape"),
        (np.zeros((8, 8, 3), np.uint8), "float image"),
        (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
    ]
    for arr, msg in bad:
        with pytest.raises(ValueError, match=msg):
            images.write_png(tmp_path / "bad.png", arr)
    assert not (tmp_path / "bad.png").exists()


def _save(folder, arr):
    path = folder / "src.png"
    Image.fromarray(arr).save(path)
    return path


def test_write_png_is_atomic(tmp_path, photos, monkeypatch):
    target = tmp_path / "o.png"
    first = images.read_image(_save(tmp_path, photos["astronaut"]))
    images.write_png(target, first)
    before = target.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        images.write_png(target, -first)
    monkeypatch.undo()
    assert target.read_bytes() == before  # old file untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png", "src.png"]  # no temp file left


def test_range_helpers():
    x = np.linspace(-1, 1, 11, dtype=np.float32)
    np.testing.assert_allclose(images.to_unit(x), np.linspace(0, 1, 11), atol=1e-7)
    np.testing.assert_allclose(images.from_unit(images.to_unit(x)), x, atol=1e-7)
