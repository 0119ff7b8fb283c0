"""benchmarks/blocks.py: case parsing, block shapes (fast) and a tiny ours-only run (slow)."""
from __future__ import annotations

import json
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import blocks  # noqa: E402


def test_cases_are_checked(tmp_path):
    assert blocks.parse_case("res:64:512:256") == ("res", 64, 512, 256, 1)
    assert blocks.parse_case("conv:128:256:256:4") == ("conv", 128, 256, 256, 4)
    assert len(blocks.parse_args([]).cases) == len(blocks.ADM256_CASES.split(","))
    for bad, message in (("ffn:8:32:32", "kind:size"), ("res:8:32", "kind:size"), ("res:0:32:32", "kind:size"),
                         ("conv:8:32:32:0", "kind:size"), ("conv:8:32:32:2:1", "kind:size"),
                         ("gn:8:32:64", "keeps its channels"), ("attn:8:96:96", "divide by 64"),
                         ("conv:8:33:32", "multiples of 32")):
        with pytest.raises(SystemExit, match=message):
            blocks.parse_case(bad)
    with pytest.raises(SystemExit, match="--cases is empty"):
        blocks.parse_args(["--cases", ","])
    with pytest.raises(SystemExit, match="no guided_diffusion folder"):
        blocks.parse_args(["--official", str(tmp_path)])


@pytest.mark.slow
def test_ours_only_run_times_every_case(tmp_path):
    out = tmp_path / "blocks.json"
    result = blocks.main(["--cases", "res:8:32:64,attn:8:64:64:2,gn:8:32:32,conv:8:32:32:3", "--pairs", "2",
                          "--repeats", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert [r["case"] for r in saved["rows"]] == ["res:8:32:64", "attn:8:64:64:2", "gn:8:32:32", "conv:8:32:32:3"]
    assert all(r["ours_s"] > 0 and len(r["ours_pairs_s"]) == 2 and "official_s" not in r for r in saved["rows"])
    assert saved["official"] is None and result["rows"][0]["case"] == "res:8:32:64"
    assert set(saved["glibc_env"]) == set(blocks.GLIBC_ENV_NAMES)


def test_our_blocks_have_the_requested_shapes():
    for kind, size, cin, cout, batch in (("res", 8, 32, 64, 1), ("res", 8, 32, 32, 3), ("attn", 8, 64, 64, 2),
                                         ("gn", 4, 32, 32, 1), ("conv", 4, 32, 96, 2)):
        call, inputs = blocks.ours(kind, size, cin, cout, batch)
        out = call()
        assert inputs["x"].shape == (batch, size, size, cin) and out.shape == (batch, size, size, cout)
