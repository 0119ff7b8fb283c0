"""``--config`` of every CLI (deqir / resshift x sample / convert / train): preset names work from any folder, and
every bad ``--config`` or ``--config.<field>`` is one line on stderr naming the problem and the fix, exit 1, with
nothing in the working tree touched.

The flag itself is tested in-process on a fresh ``FlagValues`` (quick); the full table runs each CLI as a
subprocess (``slow``, about 4 s each for importing jax) except one representative quick case.
"""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest
from absl import flags

from ircore import config_cli, config_utils

REPO = pathlib.Path(__file__).resolve().parents[1]

# Per CLI: the flags it needs besides --config, a good preset, a misspelt name, a refused argument, a misspelt
# field and an int field (each with the expected message fragment).
CLIS = {
    "deqir_jax.sample": dict(
        extra=[], preset="sr_x4", misspelt=("sr_x5", "did you mean sr_x4, sr_x2?"),
        bad_arg=("sr_x4:embeded", "config sr_x4 rejects ':embeded': unknown dataset 'embeded'; expected one of "
                                  "['celeba', 'embedded', 'imagenet']"),
        field=("timestep", "did you mean --config.timesteps"), int_field="timesteps"),
    "deqir_jax.convert": dict(
        extra=["--src", "prior.pt", "--out", "converted"], preset="imagenet256_uncond",
        misspelt=("imagenet256_uncnd", "did you mean imagenet256_uncond"),
        bad_arg=("imagenet256_uncond:x", "config imagenet256_uncond takes no argument: drop ':x'"),
        field=("model.num_chanels", "did you mean --config.model.num_channels"), int_field="model.num_channels"),
    "deqir_jax.train": dict(
        extra=["--workdir", "run"], preset="embedded_prior:smoke",
        misspelt=("embeded_prior", "did you mean embedded_prior"),
        bad_arg=("embedded_prior:smok", "config embedded_prior rejects ':smok': variant must be 'full' or 'smoke'"),
        field=("train.total_step", "did you mean --config.train.total_steps"), int_field="train.total_steps"),
    "resshift_jax.sample": dict(
        extra=[], preset="bicsr_x4", misspelt=("bicsr", "did you mean bicsr_x4"),
        bad_arg=("embedded_x4:smoek", "config embedded_x4 rejects ':smoek': variant must be 'sample', 'train' "
                                      "or 'smoke'"),
        field=("sample.sed", "did you mean --config.sample.seed"), int_field="sample.seed"),
    "resshift_jax.convert": dict(
        extra=["--src", "unet.pth", "--out", "converted"], preset="realsr_x4_v3",
        misspelt=("realsr_x4_v4", "did you mean realsr_x4_v3, realsr_x4_v2, realsr_x4_v1?"),
        bad_arg=("vq_f4:fac", "config vq_f4 rejects ':fac': unknown VQ-f4 weights 'fac'; expected one of "
                              "['face', 'imagenet']"),
        field=("model.window_sise", "did you mean --config.model.window_size"), int_field="model.window_size"),
    "resshift_jax.train": dict(
        extra=["--workdir", "run"], preset="tiny_train", misspelt=("tiny_trian", "did you mean tiny_train"),
        bad_arg=("tiny_train:bics", "config tiny_train rejects ':bics': tiny_train supports task 'bicsr' or "
                                    "'realsr'"),
        field=("train.lr_mn", "did you mean --config.train.lr_min"), int_field="train.total_steps"),
}


def _cases(cli: str) -> list[tuple[list[str], str]]:
    """(arguments, expected fragment of the one error line) for one CLI."""
    c = CLIS[cli]
    folder = "deqir" if cli.startswith("deqir") else "resshift"
    preset = c["preset"]
    cases = [
        (["--config", c["misspelt"][0]], f"unknown preset '{c['misspelt'][0]}' ({c['misspelt'][1]}"),
        (["--config", c["bad_arg"][0]], c["bad_arg"][1]),
        (["--config=nope.py"], "config file nope.py does not exist"),
        ([f"--config=configs/{folder}/{preset.split(':')[0]}.py"],  # a repo-relative path, run from elsewhere
         f"config file configs/{folder}/{preset.split(':')[0]}.py does not exist; did you mean --config "
         f"{preset.split(':')[0]}?"),
        (["--config", "broken.py"], "broken.py:2 has a syntax error: invalid syntax; fix the file"),
        (["--config", "noget.py"], "noget.py defines no get_config()"),
        (["--config", "raises.py"], "raises.py:3 failed to load (NameError): name 'oops' is not defined"),
        (["--config", preset, f"--config.{c['field'][0]}=1"],
         f"unknown config field --config.{c['field'][0]} ({c['field'][1]}"),
        (["--config", preset, f"--config.{c['int_field']}=abc"],
         f"--config.{c['int_field']}=abc: not a valid int (invalid literal for int() with base 10: 'abc')"),
        ([f"--config.{c['int_field']}=3", "--config", preset], "put --config first"),
        (["--config", preset, "stray"], "unexpected argument(s) stray: write --config.FIELD=VALUE, with '='"),
    ]
    if "sample" not in cli:  # the samplers have a default preset
        cases.append(([], "no --config given: pass a preset name or a config file path (presets: "))
    return cases


TABLE = [(cli, args, fragment) for cli in CLIS for args, fragment in _cases(cli)]
QUICK = {("deqir_jax.sample", "sr_x4:embeded")}  # one representative subprocess case in the quick suite


def _is_quick(cli: str, args: list[str]) -> bool:
    return any(c == cli and a in args for c, a in QUICK)


def _snapshot(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture
def workdir(tmp_path):
    """A working folder (not the repository) holding broken config files and a file of the user's."""
    (tmp_path / "broken.py").write_text("import ml_collections\ndef get_config(:\n")
    (tmp_path / "noget.py").write_text("CONFIG = {}\n")
    (tmp_path / "raises.py").write_text("import ml_collections\n\nX = oops\n")
    (tmp_path / "notes.txt").write_text("the user's file\n")
    return tmp_path


def _run_case(workdir: pathlib.Path, cli: str, args: list[str], fragment: str) -> None:
    before = _snapshot(workdir)
    proc = subprocess.run([sys.executable, "-m", cli, *args, *CLIS[cli]["extra"]], capture_output=True, text=True,
                          timeout=300, cwd=workdir)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"{cli}: error: ") and fragment in lines[0], proc.stderr[-2000:]
    assert _snapshot(workdir) == before  # no output folder, no workdir, no file touched


@pytest.mark.parametrize("cli, args, fragment", [t for t in TABLE if _is_quick(t[0], t[1])])
def test_bad_config_is_one_line_quick(workdir, cli, args, fragment):
    _run_case(workdir, cli, args, fragment)


@pytest.mark.slow
@pytest.mark.parametrize("cli, args, fragment", [t for t in TABLE if not _is_quick(t[0], t[1])])
def test_bad_config_is_one_line(workdir, cli, args, fragment):
    _run_case(workdir, cli, args, fragment)


@pytest.mark.slow
@pytest.mark.parametrize("cli, fragment", [
    ("deqir_jax.sample", "no input given"),
    ("resshift_jax.sample", "no input given"),
    ("deqir_jax.convert", "--src prior.pt does not exist"),
    ("resshift_jax.convert", "--src unet.pth does not exist"),
])
def test_a_preset_name_works_from_any_folder(workdir, cli, fragment):
    """The preset resolves from a folder outside the repository: the run gets past the config to its next check."""
    _run_case(workdir, cli, ["--config", CLIS[cli]["preset"]], fragment)


# --- the flag in-process (quick) -------------------------------------------------------------------------------


def _parse(prog: str, argv: list[str], default: str | None = None) -> flags.FlagValues:
    values = flags.FlagValues()
    config_cli.define_config_flag(prog, default=default, help_string="test", argv=argv, flag_values=values)
    config_cli.flags_parser(prog, flag_values=values)(argv)
    return values


def _error_line(capsys, prog: str, argv: list[str], default: str | None = None) -> str:
    with pytest.raises(SystemExit) as exit_:
        _parse(prog, argv, default)
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    return lines[0]


def test_the_flag_resolves_names_and_applies_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = _parse("deqir_jax.sample", ["prog", "--config", "sr_x4:embedded", "--config.timesteps=3"])
    assert values["config"].config_filename == f"{REPO}/configs/deqir/sr_x4.py:embedded"
    assert values.config.timesteps == 3 and values.config.model.arch  # the embedded preset, overridden
    values = _parse("resshift_jax.train", ["prog", "--config=vq_f4:face"])  # a subfolder preset
    assert values["config"].config_filename == f"{REPO}/configs/resshift/autoencoders/vq_f4.py:face"
    values = _parse("deqir_jax.sample", ["prog", "--config.timesteps=4"], default="sr_x2:embedded")
    assert values.config.timesteps == 4 and values["config"].config_filename.endswith("configs/deqir/sr_x2.py:embedded")
    with pytest.raises(AttributeError):  # still locked: no new fields from Python either
        values.config.new_field = 1


def test_the_flag_reports_each_problem_on_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _error_line(capsys, "deqir_jax.sample", ["prog", "--config", "sr_x4", "--config.tol=1"])
    assert "unknown config field --config.tol (did you mean --config.init_opt.solver.tol, --config.solver.tol" in line
    line = _error_line(capsys, "deqir_jax.sample", ["prog", "--config.score_lpips=maybe"], default="sr_x4:embedded")
    assert line.endswith("--config.score_lpips=maybe: not a valid bool; the field holds bool values, "
                         "e.g. --config.score_lpips=True")
    line = _error_line(capsys, "resshift_jax.train", ["prog", "--config", "tiny_train", "--config.degradation=x"])
    assert "--config.degradation holds None, which cannot be set on the command line: copy the config file" in line
    line = _error_line(capsys, "resshift_jax.convert", ["prog", "--config", "vq_f8", "--config.dtype.x=1"])
    assert "--config.dtype is a field of type str, not a section" in line
    line = _error_line(capsys, "deqir_jax.sample", ["prog", "--config", "sr_x4", "--config.score_lpips", "False"])
    assert line.endswith("unexpected argument(s) False: write --config.FIELD=VALUE, with '='")
    (tmp_path / "none.py").write_text("def get_config():\n    pass\n")
    line = _error_line(capsys, "deqir_jax.train", ["prog", "--config=none.py"])
    assert line.endswith("config none.py: get_config() returned NoneType, not a ConfigDict")
    line = _error_line(capsys, "deqir_jax.convert", ["prog"])
    assert "no --config given: pass a preset name or a config file path (presets: base, colorization," in line


def test_argv_helpers():
    argv = ["prog", "--config", "a", "--config.x.y=1", "--noconfig.flag", "--config=b:c", "--other=1"]
    assert config_cli.config_value(argv) == "b:c"
    assert config_cli.config_value(["prog", "--config"]) is None
    assert config_cli.override_paths(argv) == ["x.y", "flag"]
    resolved = config_cli.with_resolved_config(["prog", "--config", "sr_x4", "--config=celeba_hq", "-x"],
                                               "deqir_jax.sample")
    assert resolved == ["prog", "--config", f"{REPO}/configs/deqir/sr_x4.py",
                        f"--config={REPO}/configs/deqir/models/celeba_hq.py", "-x"]


def test_readme_commands_name_presets_that_load_from_any_folder(tmp_path, monkeypatch):
    """Every ``--config`` in the README's shell blocks (commands and the option comments under them) is a
    preset name, not a repo-relative path, and loads from a folder outside the repository."""
    monkeypatch.chdir(tmp_path)
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S))
    uses, cli = [], None
    for line in blocks.replace("\\\n", " ").splitlines():
        cli = (re.search(r"python -m (\w+\.\w+)", line) or [None, cli])[1]  # comments: options of the last command
        uses += [(cli, value) for value in re.findall(r"--config[ =](\S+)", line)]
    assert len(uses) >= 12, uses
    for cli, value in uses:
        assert config_utils.is_preset_name(value), f"README: --config {value} is a path; use the preset name"
        resolved = config_utils.resolve_config(value, config_utils.preset_dirs(cli))
        assert len(config_utils.load_config_file(resolved)) > 0
