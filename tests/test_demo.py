"""The demo command end to end (its quick profile: same pipeline, debug schedule)."""

import json
import subprocess

import pytest


def test_demo_quick_profile_prints_the_table(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        ["nnunet_hlfd", "demo", "--output", str(out), "--profile", "quick"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert step in result.stdout  # progress output
    rows = json.loads((out / "demo_results.json").read_text())
    assert [r["model"] for r in rows] == ["teacher", "student alone", "HLFD student"]
    teacher, student, hlfd = rows
    assert student["parameters"] == hlfd["parameters"]
    assert student["parameters"] / teacher["parameters"] == pytest.approx(0.25, abs=0.01)
    for row in rows:
        assert set(row["dice"]) == {"organ", "tumour"}
        assert all(0.0 <= d <= 1.0 for d in row["dice"].values())
        assert row["predict_s_per_case"] > 0
    table = (out / "demo_results.md").read_text()
    assert "| HLFD student | nnUNetTrainerHLFD_debug |" in table and table in result.stdout


def test_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = subprocess.run(["nnunet_hlfd", "demo", "--output", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0 and "--overwrite" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1
