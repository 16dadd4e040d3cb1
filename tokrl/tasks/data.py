"""Tables of examples from local files: prompts for RL, pairs for reward models,
prompt/completion pairs for SFT.

``read_rows`` reads JSONL (one JSON object a line), CSV (a header line, every value
a string) or Parquet into a list of plain dicts. With ``engine="auto"`` it uses the
``datasets`` library when it is installed and the standard library (plus pyarrow
for Parquet) when it is not; both engines give the same rows for the same file
(CSV values are read as strings by both, so "007" stays "007").
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

Row = dict[str, Any]

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
ENGINES = ("auto", "datasets", "builtin")


def read_rows(path: str | Path, engine: str = "auto") -> list[Row]:
    """Every row of a local JSONL, CSV or Parquet file, in file order.

    The format comes from the suffix (.jsonl/.json, .csv, .parquet). Raises
    FileNotFoundError for a missing file and ValueError for an unknown suffix, a
    malformed line or an empty table, naming the file (and line) at fault.
    """
    path = Path(path)
    if engine not in ENGINES:
        raise ValueError(f"unknown data engine {engine!r}; choose {', '.join(ENGINES)}")
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unknown data format {path.suffix!r}; use .jsonl, .csv or .parquet")
    if engine == "datasets" or (engine == "auto" and _has_datasets()):
        rows = _read_with_datasets(path, kind)
    else:
        rows = {"json": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[kind](path)
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def _has_datasets() -> bool:
    try:
        import datasets  # noqa: F401
    except ImportError:
        return False
    return True


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
            rows.append(row)
    return rows


def _read_csv(path: Path) -> list[Row]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = []
        for row in reader:
            if None in row:   # more fields than the header names
                raise ValueError(f"{path}:{reader.line_num}: more values than the header has columns")
            rows.append(dict(row))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    return pq.read_table(path).to_pylist()


def _read_with_datasets(path: Path, kind: str) -> list[Row]:
    import tempfile

    import datasets

    options: dict[str, Any] = {}
    if kind == "csv":
        # every column a string, as the stdlib reader gives: no guessed ints or NaN
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
        options["features"] = datasets.Features({name: datasets.Value("string") for name in header})
    # the same line-numbered errors as the builtin engine (and no rows: nothing to load)
    if kind != "parquet" and not {"json": _read_jsonl, "csv": _read_csv}[kind](path):
        return []
    # a private cache: nothing is written under ~/.cache, and it is gone afterwards
    with tempfile.TemporaryDirectory(prefix="tokrl-datasets-") as cache:
        try:
            with _quiet_datasets(datasets):
                table = datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=cache,
                                              keep_in_memory=True, **options)
        except Exception as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{path}: datasets could not read it ({message})") from e
        rows = table.to_list()
    return rows


class _quiet_datasets:
    """No progress bars or info logs from ``datasets`` while it loads one local file."""

    def __init__(self, datasets):
        self.datasets = datasets

    def __enter__(self):
        self.bars = self.datasets.utils.are_progress_bars_disabled()
        self.level = self.datasets.logging.get_verbosity()
        self.datasets.utils.disable_progress_bars()
        self.datasets.logging.set_verbosity_error()

    def __exit__(self, *exc):
        if not self.bars:
            self.datasets.utils.enable_progress_bars()
        self.datasets.logging.set_verbosity(self.level)


def require_columns(rows: list[Row], columns: list[str], path: str | Path, option: str = "") -> None:
    """Raise ValueError naming the first missing column (and the columns there are)."""
    for name in columns:
        for i, row in enumerate(rows):
            if name not in row:
                have = ", ".join(sorted(row)) or "none"
                hint = f" (set {option})" if option else ""
                where = "" if i == 0 else f" in row {i + 1}"
                raise ValueError(f"{path}: no column {name!r}{where}; columns: {have}{hint}")
            if row[name] is None:
                raise ValueError(f"{path}: row {i + 1} has no value in column {name!r}")


def split_rows(rows: list[Row], test_fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(train, test): a seeded shuffle, then the first round(test_fraction * n) rows are
    the test split; with test_fraction > 0 and at least 2 rows both splits are non-empty."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = round(test_fraction * len(rows))
    if test_fraction > 0 and len(rows) >= 2:
        n_test = min(max(n_test, 1), len(rows) - 1)
    shuffled = [rows[i] for i in order]
    return shuffled[n_test:], shuffled[:n_test]


def load_table(path: str | Path, columns: list[str], test_path: str | Path | None = None,
               test_fraction: float = 0.1, seed: int = 0, engine: str = "auto",
               option: str = "") -> tuple[list[Row], list[Row]]:
    """(train, test) rows of ``path`` that all have ``columns``.

    The test split is ``test_path`` when given, else a seeded ``test_fraction`` of ``path``.
    """
    rows = read_rows(path, engine)
    require_columns(rows, columns, path, option)
    if test_path is None:
        return split_rows(rows, test_fraction, seed)
    test = read_rows(test_path, engine)
    require_columns(test, columns, test_path, option)
    return rows, test


def write_jsonl(path: str | Path, rows: list[Row]) -> None:
    """One JSON object a line (UTF-8), e.g. to make a small data set."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
