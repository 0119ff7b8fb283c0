"""ircore.config_utils: loading config files by path (with and without an argument), sibling configs, errors."""
from __future__ import annotations

import textwrap

import ml_collections
import pytest

from ircore.config_utils import load_config_file, sibling_config

_CONFIG = textwrap.dedent('''
    import ml_collections

    def get_config(name="default"):
        return ml_collections.ConfigDict({"name": name, "size": len(name)})
''')


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "preset.py"
    path.write_text(_CONFIG)
    return path


def test_load_without_and_with_an_argument(config_file):
    cfg = load_config_file(config_file)
    assert isinstance(cfg, ml_collections.ConfigDict)
    assert cfg.to_dict() == {"name": "default", "size": 7}
    assert load_config_file(config_file, "x4").to_dict() == {"name": "x4", "size": 2}
    assert load_config_file(str(config_file)).name == "default"


def test_command_line_form_file_colon_argument(config_file):
    assert load_config_file(f"{config_file}:realsr").to_dict() == {"name": "realsr", "size": 6}
    # an explicit argument wins: the colon is then part of nothing but the (missing) file name
    with pytest.raises(FileNotFoundError):
        load_config_file(f"{config_file}:realsr", "bicsr")


def test_each_load_runs_the_file_afresh(config_file):
    a = load_config_file(config_file)
    a.name = "changed"
    assert load_config_file(config_file).name == "default"


def test_sibling_config_resolves_relative_to_the_calling_file(tmp_path, config_file):
    (tmp_path / "sub").mkdir()
    caller = tmp_path / "sub" / "caller.py"
    assert sibling_config(str(caller), "../preset.py").name == "default"
    assert sibling_config(str(caller), "../preset.py", "faceir").to_dict() == {"name": "faceir", "size": 6}
    assert sibling_config(str(config_file), "preset.py:x2").name == "x2"


def test_errors_are_one_line(tmp_path):
    missing = tmp_path / "nope.py"
    with pytest.raises(FileNotFoundError, match="config file .*nope.py does not exist") as err:
        load_config_file(missing)
    assert "\n" not in str(err.value)
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(ValueError, match="config file .*empty.py defines no get_config()") as err:
        load_config_file(empty)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config_file(tmp_path)  # a folder is not a config file
