"""Real photographs that ship inside installed packages, split by source photograph into a training set and a
held-out set.

The embedded default models (``configs/*/embedded*.py``) are trained on :data:`TRAIN` (10 source photographs:
scenes, textures, aerial, astronomy, microscopy, medical) and judged on :data:`HELDOUT` (10 others: people,
animal, objects, a texture, grey and colour), which training never reads. The photographs come from scikit-image
(``skimage/data``), scikit-learn (``sklearn/datasets/images``), matplotlib (``mpl-data/sample_data``) and
PyWavelets (``pywt/data``, grey arrays in ``.npz``): ``pip install -e ".[embedded]"``. Each entry of
:data:`SOURCES` states the licence its package gives. Three held-out photos are also bundled with this package
(``ircore/photo_files/``, byte-identical copies), so the default sampling commands run without the extra.

Grey photographs are used as RGB (the grey value repeated), as every other image reader here does.
"""
from __future__ import annotations

import importlib.resources
import pathlib

import numpy as np

# name: (package holding the file, file path inside it, licence as the package states it)
SOURCES = {
    # training set: 10 source photographs (the motorcycle stereo pair is one scene, two files)
    "china": ("sklearn.datasets.images", "china.jpg", "CC BY 2.0, danielbuechele (Flickr)"),
    "motorcycle_left": ("skimage.data", "motorcycle_left.png", "Middlebury stereo data set, research use"),
    "motorcycle_right": ("skimage.data", "motorcycle_right.png", "Middlebury stereo data set, research use"),
    "ihc": ("skimage.data", "ihc.png", "no known copyright restrictions"),
    "brick": ("skimage.data", "brick.png", "CC0 (CC0Textures)"),
    "grass": ("skimage.data", "grass.png", "CC0 (DeviantArt, linolafett)"),
    "moon": ("skimage.data", "moon.png", "scikit-image sample data (BSD-3-Clause package)"),
    "hubble_deep_field": ("skimage.data", "hubble_deep_field.jpg", "public domain (NASA)"),
    "retina": ("skimage.data", "retina.jpg", "CC0 1.0 (Wikimedia Commons)"),
    "cell": ("skimage.data", "cell.png", "CC0 (Mueller et al. 2018)"),
    "aero": ("pywt.data", "aero.npz", "no licence stated (PyWavelets, MIT-licensed package)"),
    # held-out set: 10 source photographs, never read by training
    "chelsea": ("skimage.data", "chelsea.png", "CC0, Stefan van der Walt"),
    "coffee": ("skimage.data", "coffee.png", "CC0, Rachel Michetti"),
    "flower": ("sklearn.datasets.images", "flower.jpg", "CC BY 2.0, vultilion (Flickr)"),
    "astronaut": ("skimage.data", "astronaut.png", "public domain (NASA)"),
    "rocket": ("skimage.data", "rocket.jpg", "public domain (SpaceX)"),
    "camera": ("skimage.data", "camera.png", "CC0, Lav Varshney"),
    "coins": ("skimage.data", "coins.png", "no known copyright restrictions (Brooklyn Museum)"),
    "gravel": ("skimage.data", "gravel.png", "CC0 (CC0Textures)"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "public domain (U.S. Navy)"),
    "ascent": ("pywt.data", "ascent.npz", "public domain (public-domain-image.com)"),
}
HELDOUT = ("chelsea", "coffee", "flower", "astronaut", "rocket", "camera", "coins", "gravel", "grace_hopper", "ascent")
TRAIN = tuple(name for name in SOURCES if name not in HELDOUT)
BUNDLED = ("chelsea", "coffee", "flower")  # copies inside this package: the sampling defaults need no extra
DEFAULT = "chelsea"  # the photo the no-argument sampling commands restore
SPLITS = {"train": TRAIN, "heldout": HELDOUT}
_DISTRIBUTIONS = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib", "pywt": "PyWavelets"}

_BUNDLED = pathlib.Path(__file__).with_name("photo_files")


def package_path(name: str) -> pathlib.Path:
    """The photo's file inside its installed package (ModuleNotFoundError names the package to install)."""
    if name not in SOURCES:
        raise ValueError(f"unknown photo {name!r}; expected one of {sorted(SOURCES)}")
    package, file, _ = SOURCES[name]
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        dist = _DISTRIBUTIONS[package.split(".")[0]]
        raise ModuleNotFoundError(f"photo {name!r} ships with {dist}: pip install -e \".[embedded]\"") from None
    path = pathlib.Path(str(root / file))
    if not path.is_file():
        raise FileNotFoundError(f"photo {name!r}: {path} is missing from the installed {package}")
    return path


def bundled_path(name: str) -> pathlib.Path:
    """The bundled copy of one of the :data:`BUNDLED` held-out photos (no extra package needed)."""
    if name not in BUNDLED:
        raise ValueError(f"only the photos {BUNDLED} are bundled, not {name!r}")
    return _BUNDLED / SOURCES[name][1]


def path(name: str) -> pathlib.Path:
    """Where to read photo ``name``: the bundled copy where there is one, else the installed package's file."""
    return bundled_path(name) if name in BUNDLED else package_path(name)


def split_paths(split: str) -> list[pathlib.Path]:
    """The files of ``split`` (``"train"`` or ``"heldout"``), in :data:`SOURCES` order."""
    if split not in SPLITS:
        raise ValueError(f"unknown photo split {split!r}; expected one of {sorted(SPLITS)}")
    return [path(name) for name in SPLITS[split]]


def load(name: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB pixels of photo ``name``."""
    from PIL import Image  # noqa: PLC0415

    file = path(name)
    if file.suffix == ".npz":  # PyWavelets keeps its grey photos as uint8 arrays under "data"
        with np.load(file) as archive:
            grey = np.asarray(archive["data"], np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    with Image.open(file) as im:
        return np.asarray(im.convert("RGB"))


def read(name: str) -> np.ndarray:
    """Photo ``name`` as a (1, H, W, 3) float32 image in [-1, 1], the library's image convention."""
    from ircore.images import from_unit  # noqa: PLC0415

    return from_unit(load(name)[None].astype(np.float32) / 255.0)
