"""`apron prepare --out`: what is already at the path and is not a processed dataset is the user's."""

from __future__ import annotations

from pathlib import Path

import pytest

import cli

SMALL = ["--dataset", "synthetic", "--n-users", "300", "--n-items", "200"]


def test_prepare_refuses_an_out_that_is_not_a_dataset_and_replaces_one_that_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("important")
    file = tmp_path / "file.pt"
    file.write_text("weights")
    for target in (precious, file):
        assert cli.main(["prepare", *SMALL, "--out", str(target)]) == 2
        assert f"{target} exists and is a" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "important" and file.read_text() == "weights"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
    data = tmp_path / "data"
    assert cli.main(["prepare", *SMALL, "--out", str(data)]) == 0
    assert cli.main(["prepare", *SMALL, "--out", str(data), "--seed", "1"]) == 0  # a dataset it wrote: replaced
    assert (data / "dataset.json").is_file()
