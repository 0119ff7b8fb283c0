"""Released ResShift model `inpaint_face` (see `base.py` for the sections)."""
import pathlib

import ml_collections

from ircore.config_utils import load_config_file


def get_config() -> ml_collections.ConfigDict:
    return load_config_file(pathlib.Path(__file__).parent / "base.py", "inpaint_face")
