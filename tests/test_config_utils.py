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


# --- preset names, one-line errors, override field checks ----------------------------------------------------------

import pathlib  # noqa: E402

from ircore.config_utils import (  # noqa: E402
    ArgumentRefused, ConfigError, check_override_paths, closest, preset_dirs, preset_names, resolve_config, split_arg)


@pytest.fixture
def fake_root(tmp_path):
    """configs/toy/{sr_x4,sr_x2,deblur}.py and configs/toy/models/{prior,_private}.py."""
    top = tmp_path / "configs" / "toy"
    (top / "models").mkdir(parents=True)
    (top / "__pycache__").mkdir()
    for name in ("sr_x4", "sr_x2", "deblur"):
        (top / f"{name}.py").write_text(_CONFIG)
    (top / "models" / "prior.py").write_text(_CONFIG)
    (top / "models" / "_private.py").write_text(_CONFIG)
    return tmp_path / "configs"


def test_preset_dirs_are_the_package_folder_then_its_subfolders(fake_root):
    assert preset_dirs("toy_jax.sample", fake_root) == (fake_root / "toy", fake_root / "toy" / "models")
    assert preset_dirs("missing_jax.train", fake_root) == (fake_root / "missing",)
    assert preset_names(preset_dirs("toy_jax.convert", fake_root)) == ["deblur", "sr_x2", "sr_x4", "prior"]


def test_the_real_package_preset_folders():
    root = pathlib.Path(__file__).resolve().parents[1] / "configs"
    assert preset_dirs("deqir_jax.sample") == (root / "deqir", root / "deqir" / "models")
    assert preset_dirs("resshift_jax.train") == (root / "resshift", root / "resshift" / "autoencoders")


@pytest.mark.parametrize("value, expected", [
    ("sr_x4", "toy/sr_x4.py"),
    ("sr_x4:embedded", "toy/sr_x4.py:embedded"),
    ("prior", "toy/models/prior.py"),
    ("models/prior:x", "toy/models/prior.py:x"),
])
def test_a_preset_name_resolves_from_any_folder(fake_root, tmp_path, monkeypatch, value, expected):
    monkeypatch.chdir(tmp_path)  # no configs/ under the working folder's name
    resolved = resolve_config(value, preset_dirs("toy_jax.sample", fake_root))
    assert resolved == f"{fake_root}/{expected}"


def test_an_existing_path_is_kept_as_given(fake_root, tmp_path, monkeypatch):
    dirs = preset_dirs("toy_jax.sample", fake_root)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text(_CONFIG)
    assert resolve_config("mine.py:x", dirs) == "mine.py:x"
    assert resolve_config(f"{fake_root}/toy/sr_x4.py", dirs) == f"{fake_root}/toy/sr_x4.py"
    assert load_config_file(resolve_config("sr_x2:ab", dirs)).to_dict() == {"name": "ab", "size": 2}


@pytest.mark.parametrize("value, error, fragment", [
    ("sr_x5", ConfigError, "unknown preset 'sr_x5' (did you mean sr_x4, sr_x2?)"),
    ("deblurr:celeba", ConfigError, "unknown preset 'deblurr' (did you mean deblur?)"),
    ("zzzz", ConfigError, "(presets: deblur, sr_x2, sr_x4, prior)"),
    ("sr_x4.py", FileNotFoundError, "config file sr_x4.py does not exist; did you mean --config sr_x4?"),
    ("./nope.py:x", FileNotFoundError, "config file ./nope.py does not exist"),
    ("", ConfigError, "--config is empty"),
    (":x", ConfigError, "--config is empty"),
])
def test_unknown_names_and_missing_files_name_the_closest_presets(fake_root, tmp_path, monkeypatch, value, error,
                                                                  fragment):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as err:
        resolve_config(value, preset_dirs("toy_jax.sample", fake_root))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_folder_is_not_a_config(fake_root, monkeypatch):
    monkeypatch.chdir(fake_root)
    with pytest.raises(ConfigError, match=r"^toy is a folder: pass a preset name \(e.g. --config deblur\) or the "):
        resolve_config("toy", preset_dirs("toy_jax.sample", fake_root))


def test_no_configs_folder_says_so(tmp_path):
    with pytest.raises(ConfigError, match="the configs folder .* is not here .*pass a config file path"):
        resolve_config("sr_x4", preset_dirs("toy_jax.sample", tmp_path / "nowhere"))


def test_split_arg_uses_only_the_last_path_component():
    assert split_arg("a:b/c.py:x:y") == ("a:b/c.py", "x:y")
    assert split_arg("c.py") == ("c.py", None)
    assert split_arg("c:") == ("c", "")
    assert closest("timestep", ["timesteps", "tol", "image_size"]) == ["timesteps"]


@pytest.mark.parametrize("source, fragment", [
    ("def get_config(:\n", "empty.py:1 has a syntax error: invalid syntax; fix the file"),
    ("import ml_collections\n\nX = undefined_name\n", "empty.py:3 failed to load (NameError): name 'undefined_name'"),
    ("get_config = 3\n", "defines no get_config()"),
    ("def get_config():\n    return {}['k']\n", "empty.py:2: get_config failed: k"),
])
def test_a_broken_file_is_one_line_with_its_line_number(tmp_path, source, fragment):
    bad = tmp_path / "empty.py"
    bad.write_text(source)
    with pytest.raises(ConfigError) as err:
        load_config_file(bad)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_refused_argument_names_the_preset_given_and_the_accepted_values(tmp_path):
    (tmp_path / "base.py").write_text(
        "def get_config(dataset='a'):\n"
        "    if dataset not in ('a', 'b'):\n"
        "        raise ValueError(f'unknown dataset {dataset!r}; expected one of [a, b]')\n"
        "    return {'dataset': dataset}\n")
    (tmp_path / "task.py").write_text(
        "from ircore.config_utils import sibling_config\n"
        "def get_config(dataset='a'):\n    return sibling_config(__file__, 'base.py', dataset)\n")
    (tmp_path / "plain.py").write_text("def get_config():\n    return {}\n")
    with pytest.raises(ArgumentRefused) as err:
        load_config_file(f"{tmp_path / 'task.py'}:c")
    assert str(err.value) == "config task rejects ':c': unknown dataset 'c'; expected one of [a, b]"
    with pytest.raises(ConfigError, match=r"^config plain takes no argument: drop ':x'$"):
        load_config_file(tmp_path / "plain.py", "x")


def test_override_paths_are_checked_against_the_config():
    cfg = ml_collections.ConfigDict({"timesteps": 25, "image_size": 256,
                                     "solver": {"tol": 1e-3, "max_iter": 10}, "model": {"arch": "unet"}})
    check_override_paths(cfg, ["timesteps", "solver.tol", "model"])
    for path, fragment in [
        ("timestep", "unknown config field --config.timestep (did you mean --config.timesteps?)"),
        ("tol", "unknown config field --config.tol (did you mean --config.solver.tol?)"),
        ("solver.max_iters", "--config.solver.max_iters (did you mean --config.solver.max_iter?)"),
        ("model.zzz", "unknown config field --config.model.zzz (fields of --config.model: arch)"),
        ("timesteps.x", "--config.timesteps is a field of type int, not a section: --config.timesteps.x does not exist"),
    ]:
        with pytest.raises(ConfigError) as err:
            check_override_paths(cfg, [path])
        assert fragment in str(err.value), str(err.value)
