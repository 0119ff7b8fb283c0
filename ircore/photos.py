"""Real photographs that ship inside installed packages, split into a training set and a held-out set.

The embedded default models (``configs/*/embedded*.py``) are trained on :data:`TRAIN` and judged on
:data:`HELDOUT`, which training never sees. The training photos are read from the installed packages
(``scikit-image`` ``skimage/data`` and ``scikit-learn`` ``sklearn/datasets/images``: ``pip install -e
".[embedded]"``); the held-out photos are also bundled with this package (``ircore/photo_files/``, byte-identical
copies), so the default sampling commands run without either package.

Grey photographs are used as RGB (the grey value repeated), as every other image reader here does.
"""
from __future__ import annotations

import importlib.resources
import pathlib

import numpy as np

# name: (package holding the file, file name)
SOURCES = {
    # training set
    "astronaut": ("skimage.data", "astronaut.png"),
    "rocket": ("skimage.data", "rocket.jpg"),
    "motorcycle_left": ("skimage.data", "motorcycle_left.png"),
    "motorcycle_right": ("skimage.data", "motorcycle_right.png"),
    "ihc": ("skimage.data", "ihc.png"),
    "china": ("sklearn.datasets.images", "china.jpg"),
    "camera": ("skimage.data", "camera.png"),
    "coins": ("skimage.data", "coins.png"),
    "moon": ("skimage.data", "moon.png"),
    "brick": ("skimage.data", "brick.png"),
    "grass": ("skimage.data", "grass.png"),
    "gravel": ("skimage.data", "gravel.png"),
    # held-out set
    "chelsea": ("skimage.data", "chelsea.png"),
    "coffee": ("skimage.data", "coffee.png"),
    "flower": ("sklearn.datasets.images", "flower.jpg"),
}
HELDOUT = ("chelsea", "coffee", "flower")
TRAIN = tuple(name for name in SOURCES if name not in HELDOUT)
DEFAULT = "chelsea"  # the photo the no-argument sampling commands restore
SPLITS = {"train": TRAIN, "heldout": HELDOUT}

_BUNDLED = pathlib.Path(__file__).with_name("photo_files")


def package_path(name: str) -> pathlib.Path:
    """The photo's file inside its installed package (ModuleNotFoundError names the package to install)."""
    if name not in SOURCES:
        raise ValueError(f"unknown photo {name!r}; expected one of {sorted(SOURCES)}")
    package, file = SOURCES[name]
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        dist = "scikit-image" if package.startswith("skimage") else "scikit-learn"
        raise ModuleNotFoundError(f"photo {name!r} ships with {dist}: pip install -e \".[embedded]\"") from None
    path = pathlib.Path(str(root / file))
    if not path.is_file():
        raise FileNotFoundError(f"photo {name!r}: {path} is missing from the installed {package}")
    return path


def bundled_path(name: str) -> pathlib.Path:
    """The bundled copy of a held-out photo (no extra package needed)."""
    if name not in HELDOUT:
        raise ValueError(f"only the held-out photos {HELDOUT} are bundled, not {name!r}")
    return _BUNDLED / SOURCES[name][1]


def path(name: str) -> pathlib.Path:
    """Where to read photo ``name``: the bundled copy for held-out photos, else the installed package's file."""
    return bundled_path(name) if name in HELDOUT else package_path(name)


def split_paths(split: str) -> list[pathlib.Path]:
    """The files of ``split`` (``"train"`` or ``"heldout"``), in :data:`SOURCES` order."""
    if split not in SPLITS:
        raise ValueError(f"unknown photo split {split!r}; expected one of {sorted(SPLITS)}")
    return [path(name) for name in SPLITS[split]]


def load(name: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB pixels of photo ``name``."""
    from PIL import Image  # noqa: PLC0415

    with Image.open(path(name)) as im:
        return np.asarray(im.convert("RGB"))
