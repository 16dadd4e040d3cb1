"""Model outputs of the offline commands: they appear whole or not at all, and
--overwrite only ever replaces a model."""

from __future__ import annotations

import json

import pytest

from tokrl.offline.output import check_output_dir, staged_output


def test_a_staged_output_appears_whole(tmp_path):
    out = tmp_path / "models" / "m"
    with staged_output(out) as tmp:
        assert tmp.parent == out.parent and not out.exists()
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in out.parent.iterdir()] == ["m"]          # no temporary directory left
    assert json.loads((out / "config.json").read_text()) == {}


def test_a_failed_output_leaves_nothing_and_keeps_the_old_one(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "config.json").write_text('"old"')
    with pytest.raises(RuntimeError), staged_output(out) as tmp:
        (tmp / "config.json").write_text('"half"')
        raise RuntimeError("killed half way")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert (out / "config.json").read_text() == '"old"'
    with staged_output(out) as tmp:                                   # a success replaces it
        (tmp / "config.json").write_text('"new"')
    assert (out / "config.json").read_text() == '"new"'
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_check_output_dir(tmp_path):
    assert check_output_dir(tmp_path / "new", overwrite=False) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", overwrite=False)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        check_output_dir(model, overwrite=False)
    check_output_dir(model, overwrite=True)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not a model directory; --overwrite only replaces models"):
        check_output_dir(notes, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_output_dir(tmp_path / "file", overwrite=True)
