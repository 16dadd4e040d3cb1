"""Data: JSONL, CSV and Parquet tables read alike by both engines; splits; the column checks."""

from __future__ import annotations

import pytest

from tokrl.tasks.data import load_table, read_rows, require_columns, split_rows, write_jsonl

ROWS = [
    {"prompt": "2+2=", "answer": "4", "id": 1, "tags": ["math", "easy"]},
    {"prompt": "capital of France?", "answer": "Paris", "id": 2, "tags": []},
    {"prompt": "ünïcode ✓", "answer": "007", "id": 3, "tags": ["text"]},
]

ENGINES = ["builtin", pytest.param("datasets", marks=pytest.mark.skipif(
    not __import__("importlib").util.find_spec("datasets"), reason="datasets is not installed"))]


def write_csv(path, rows):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("engine", ENGINES)
def test_jsonl_rows_come_back_as_written(tmp_path, engine):
    path = tmp_path / "data.jsonl"
    write_jsonl(path, ROWS)
    assert read_rows(path, engine) == ROWS


def test_blank_lines_in_jsonl_are_skipped(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a"}\n\n   \n{"prompt": "b"}\n')
    assert read_rows(path, "builtin") == [{"prompt": "a"}, {"prompt": "b"}]


@pytest.mark.parametrize("engine", ENGINES)
def test_csv_values_are_strings_in_both_engines(tmp_path, engine):
    path = tmp_path / "data.csv"
    write_csv(path, [{k: v for k, v in r.items() if k != "tags"} for r in ROWS])
    rows = read_rows(path, engine)
    assert [r["id"] for r in rows] == ["1", "2", "3"]            # not guessed to be ints
    assert rows[2] == {"prompt": "ünïcode ✓", "answer": "007", "id": "3"}   # "007" keeps its zeros


@pytest.mark.parametrize("engine", ENGINES)
def test_parquet_keeps_types(tmp_path, engine):
    path = tmp_path / "data.parquet"
    write_parquet(path, ROWS)
    assert read_rows(path, engine) == ROWS


def test_auto_uses_the_same_rows_whichever_engine_it_picks(tmp_path):
    path = tmp_path / "data.jsonl"
    write_jsonl(path, ROWS)
    assert read_rows(path) == read_rows(path, "builtin")


@pytest.mark.parametrize("name, content, error, message", [
    ("missing.jsonl", None, FileNotFoundError, r"data file .*missing.jsonl not found"),
    ("data.txt", "x", ValueError, r"unknown data format '.txt'; use .jsonl, .csv or .parquet"),
    ("bad.jsonl", '{"prompt": "a"}\n{"prompt": \n', ValueError, r"bad.jsonl:2: not valid JSON"),
    ("list.jsonl", '["a", "b"]\n', ValueError, r"list.jsonl:1: expected a JSON object per line, got list"),
    ("empty.jsonl", "\n", ValueError, r"empty.jsonl holds no rows"),
    ("ragged.csv", "prompt,answer\na,b\nc,d,e\n", ValueError, r"ragged.csv:3: more values than the header"),
])
@pytest.mark.parametrize("engine", ENGINES)
def test_bad_files_raise_naming_the_file(tmp_path, name, content, error, message, engine):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=message):
        read_rows(path, engine)


def test_an_unknown_engine_is_refused(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, ROWS)
    with pytest.raises(ValueError, match="unknown data engine 'pandas'"):
        read_rows(path, "pandas")


def test_require_columns_names_what_is_missing_and_what_is_there():
    require_columns(ROWS, ["prompt", "answer"], "d.jsonl")
    with pytest.raises(ValueError, match=r"d.jsonl: no column 'question'; columns: answer, id, prompt, tags "
                                         r"\(set --prompt-column\)"):
        require_columns(ROWS, ["question"], "d.jsonl", "--prompt-column")
    with pytest.raises(ValueError, match=r"no column 'answer' in row 2"):
        require_columns([{"answer": 1}, {"other": 2}], ["answer"], "d.jsonl")
    with pytest.raises(ValueError, match=r"row 1 has no value in column 'answer'"):
        require_columns([{"answer": None}], ["answer"], "d.jsonl")


def test_split_sizes_and_disjointness():
    rows = [{"i": i} for i in range(10)]
    train, test = split_rows(rows, 0.2, seed=0)
    assert (len(train), len(test)) == (8, 2)
    assert sorted(r["i"] for r in train + test) == list(range(10))
    assert split_rows(rows, 0.0, seed=0) == (split_rows(rows, 0.0, seed=0)[0], [])
    # a small table still gets one test row (and keeps one for training)
    assert [len(s) for s in split_rows(rows[:2], 0.1, seed=0)] == [1, 1]
    with pytest.raises(ValueError, match=r"test_fraction must lie in \[0, 1\)"):
        split_rows(rows, 1.0, seed=0)


def test_split_is_deterministic_by_seed():
    rows = [{"i": i} for i in range(50)]
    assert split_rows(rows, 0.2, 3) == split_rows(rows, 0.2, 3)
    assert split_rows(rows, 0.2, 3)[1] != split_rows(rows, 0.2, 4)[1]


def test_load_table_with_a_separate_test_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "test.jsonl", ROWS[:1])
    train, test = load_table(tmp_path / "train.jsonl", ["prompt"], test_path=tmp_path / "test.jsonl")
    assert train == ROWS and test == ROWS[:1]
    write_jsonl(tmp_path / "bad_test.jsonl", [{"question": "?"}])
    with pytest.raises(ValueError, match=r"bad_test.jsonl: no column 'prompt'"):
        load_table(tmp_path / "train.jsonl", ["prompt"], test_path=tmp_path / "bad_test.jsonl")
