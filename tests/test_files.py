"""``ircore.files``: results are either absent or complete."""
from __future__ import annotations

import json

import pytest

from ircore import files


def test_write_json_text_and_bytes(tmp_path):
    out = files.write_json(tmp_path / "deep" / "r.json", {"a": [1, 2.5]})
    assert json.loads(out.read_text()) == {"a": [1, 2.5]} and out.read_text().endswith("\n")
    assert files.write_text(tmp_path / "t.txt", "héllo").read_text(encoding="utf-8") == "héllo"
    assert files.write_bytes(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "deep", "t.txt"]  # no temporary left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = files.write_json(tmp_path / "r.json", {"old": True})
    with pytest.raises(TypeError):
        files.write_json(target, {"bad": object()})  # not serialisable: nothing is written
    with pytest.raises(RuntimeError, match="killed"):
        with files.atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_path_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    with files.atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_bytes(b"png")
    assert (tmp_path / "plot.png").read_bytes() == b"png"
