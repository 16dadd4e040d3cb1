"""The run report: a real short training's run directory becomes a valid HTML page
with valid PNGs, the before/after table and one coloured span per generated token;
runs with missing files or keys still get a report; bad input exits 2."""

from __future__ import annotations

import json
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tokrl.cli import main
from tokrl.runs.report import CURVES_PNG, MAX_TABLE_ROWS, write_report

VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr"}


class Page(HTMLParser):
    """Every element with its attributes and text; fails on a close tag that does not match."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[dict] = []
        self.elements: list[dict] = []
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags: {[e['tag'] for e in self.stack]}"

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "parents": [e["tag"] + "." + e["attrs"].get(
            "class", "") for e in self.stack]}
        self.elements.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1]["tag"] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        for element in self.stack:
            element["text"] += data

    def find(self, tag: str, cls: str | None = None) -> list[dict]:
        return [e for e in self.elements if e["tag"] == tag
                and (cls is None or cls in e["attrs"].get("class", "").split())]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG; fails unless the file is one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def write_run(run_dir: Path, config: dict | None = None, **files: list[dict]) -> Path:
    """A hand-made run directory: config.yaml (when given) and JSON-lines files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    for name, records in files.items():
        (run_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


# ---------------------------------------------------------------- a real short training run

@pytest.fixture(scope="module")
def run(trained_run, tmp_path_factory) -> tuple[Path, Path]:
    """The session's 3-step REINFORCE run on the tiny model, copied without its report, and
    the report written into the copy: (run_dir, report.html)."""
    run_dir = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(trained_run.run_dir, run_dir, ignore=shutil.ignore_patterns("report.html", CURVES_PNG))
    return run_dir, write_report(run_dir)


@pytest.fixture(scope="module")
def page(run) -> Page:
    return Page(run[1].read_text(encoding="utf-8"))


def test_report_is_written_into_the_run_directory(run):
    run_dir, report = run
    assert report == run_dir / "report.html" and report.is_file()
    assert (run_dir / CURVES_PNG).is_file()


def test_the_page_parses_and_its_pictures_are_valid_pngs_beside_it(run, page):
    images = page.find("img")
    assert images, "the page shows the curves"
    for img in images:
        src = img["attrs"]["src"]
        assert "/" not in src and not src.startswith(("http", "data:")), "a relative path in the run directory"
        width, height = png_size(run[0] / src)
        assert width > 600 and height > 300
        assert img["attrs"].get("alt")


def test_the_page_is_self_contained(run):
    text = run[1].read_text(encoding="utf-8")
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert "<style>" in text


def test_header_states_the_key_facts(run, page):
    facts = {e["text"].strip().lower() for e in page.find("div", "label")}
    assert {"model", "task", "recipe", "steps", "held-out reward"} <= facts
    values = " ".join(e["text"] for e in page.find("div", "value"))
    assert "target_match" in values and "reinforce" in values and "3" in values
    # held-out before -> after, as eval.jsonl has them
    before, after = read_jsonl(run[0] / "eval.jsonl")
    assert f"{before['reward']:.2f} → {after['reward']:.2f}" in values


def test_before_after_table_pairs_the_first_and_last_evaluation_by_prompt(run, page):
    samples = read_jsonl(run[0] / "eval_samples.jsonl")
    first = [s for s in samples if s["step"] == 0]
    last = {s["prompt"]: s for s in samples if s["step"] == 3}
    rows = page.find("tr", "pair")
    assert len(rows) == min(len(first), MAX_TABLE_ROWS) == 16       # 20 held-out prompts, the first 16 shown
    cells = [e for e in page.find("td") if "tr.pair up" in e["parents"] or any(
        p.startswith("tr.pair") for p in e["parents"])]
    assert len(cells) == 5 * len(rows)                       # prompt, before, score, after, score
    for i, before in enumerate(first[:len(rows)]):
        prompt, completion_before, score_before, completion_after, score_after = (
            c["text"] for c in cells[5 * i:5 * i + 5])
        after = last[before["prompt"]]
        assert prompt == before["prompt"]
        assert completion_before == before["completion"].replace("\n", "↵") or before["completion"] == ""
        assert completion_after == after["completion"].replace("\n", "↵") or after["completion"] == ""
        assert float(score_before) == pytest.approx(before["score"], abs=0.005)
        assert float(score_after) == pytest.approx(after["score"], abs=0.005)


def test_heatmap_has_one_coloured_span_per_generated_token(run, page):
    samples = read_jsonl(run[0] / "samples.jsonl")
    shown = [s for s in samples if s["step"] in (1, 2, 3)]            # early, middle and late of 3 steps
    tokens = page.find("span", "tok")
    assert len(tokens) == sum(len(s["token_texts"]) for s in shown)
    assert len(page.find("div", "sample")) == len(shown)
    # the tokens of the last sample, in order, each with its advantage and reward in the tooltip
    last = shown[-1]
    cells = page.find("span", "cell")[-len(last["token_texts"]):]
    for cell, text, adv, rew in zip(cells, last["token_texts"], last["advantages"], last["rewards"]):
        title = cell["attrs"]["title"]
        assert repr(text) in title and f"advantage {'+' if adv > 0 else ''}" in title and "reward" in title
    for span in tokens:
        assert span["attrs"]["style"].startswith("background:#")


def test_the_report_shows_the_runs_peak_memory_and_plots_its_memory(run, page):
    metrics = read_jsonl(run[0] / "metrics.jsonl")
    cards = {e["text"].strip().lower(): e for e in page.find("div", "fact")}
    card = next(text for label, text in ((k, v["text"]) for k, v in cards.items()) if label.startswith("peak memory"))
    assert f"{max(m['memory/peak_rss_gb'] for m in metrics):.2f} GB" in card
    assert f"RSS {metrics[-1]['memory/rss_gb']:.2f} GB at the last step" in card
    notes = " ".join(e["text"] for e in page.find("p", "note"))
    assert "Memory:" not in notes                                  # the memory panel is drawn


def test_a_run_without_kl_has_no_kl_plot_and_says_why(run):
    text = run[1].read_text(encoding="utf-8")
    assert "Not plotted" in text and "no KL term" in text


# ---------------------------------------------------------------- hand-made run directories

def metrics_records(steps: int, kl: bool) -> list[dict]:
    out = []
    for s in range(1, steps + 1):
        record = {"step": s, "reward/mean": s / steps, "reward/std": 0.1, "policy/entropy": 2.0 - s / steps,
                  "completion/length": 5.0, "time/tokens_per_s": 100.0, "time/collect_s": 0.1, "time/update_s": 0.1,
                  "memory/rss_gb": 1.0 + 0.01 * (s % 3), "memory/peak_rss_gb": 1.5 + 0.01 * s}
        if kl:
            record.update({"kl/ref_per_seq": 0.01 * s, "kl/coef": 0.05})
        out.append(record)
    return out


def test_a_run_with_kl_plots_it(tmp_path):
    run_dir = write_run(tmp_path / "run", {"kl": {"coef": 0.05, "kind": "k1"}}, metrics=metrics_records(30, kl=True),
                        eval=[{"step": 0, "reward": 0.1, "n": 4}, {"step": 30, "reward": 0.9, "n": 4}])
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "Not plotted" not in text
    assert "k1 KL in reward, β=0.05" in text
    png_size(run_dir / CURVES_PNG)


def test_a_warm_started_run_shows_the_warm_start_beside_the_held_out_reward(tmp_path):
    run_dir = write_run(tmp_path / "run", metrics=metrics_records(10, kl=False),
                        eval=[{"step": 0, "reward": 0.3, "solved": 0.0, "n": 64},
                              {"step": 10, "reward": 0.9, "solved": 0.8, "n": 64}])
    (run_dir / "warm_start.json").write_text(json.dumps(
        {"demonstrations": 336, "epochs": 1, "steps": 42, "loss_first": 3.767, "loss_last": 0.048, "seconds": 61.2,
         "eval_after": {"reward": 0.84375, "solved": 0.84375, "n": 64}}))
    page = Page(write_report(run_dir).read_text(encoding="utf-8"))
    cards = [e["text"] for e in page.find("div", "fact")]
    card = next(text for text in cards if text.strip().startswith("After warm start"))
    assert "reward 0.84 · solved 84%" in card
    assert "336 demonstrations × 1 epochs · loss 3.767 → 0.048 · 61 s" in card


def test_missing_files_and_keys_still_make_a_report(tmp_path):
    # metrics without entropy or KL keys, no eval, no samples, no config
    run_dir = write_run(tmp_path / "run", metrics=[{"step": 1, "reward/mean": 0.5}, {"step": 2, "reward/mean": 0.7}])
    page = Page(write_report(run_dir).read_text(encoding="utf-8"))
    text = " ".join(e["text"] for e in page.find("p", "note"))
    assert "metrics.jsonl has no 'policy/entropy'" in text and "no evaluations" in text
    assert "metrics.jsonl has no 'memory/rss_gb'" in text
    assert "peak memory" not in {e["text"].strip().lower() for e in page.find("div", "label")}
    assert "No held-out completions" in text and "No training samples" in text
    png_size(run_dir / CURVES_PNG)


def test_a_run_that_has_only_its_config_gets_a_page_without_pictures(tmp_path):
    run_dir = write_run(tmp_path / "run", {"model": {"name": "tiny-random"}})
    page = Page(write_report(run_dir).read_text(encoding="utf-8"))
    assert not page.find("img") and not (run_dir / CURVES_PNG).exists()
    assert "tiny-random" in " ".join(e["text"] for e in page.find("div", "value"))


def test_text_is_escaped(tmp_path):
    evil = "<script>alert('x')</script> & \"q\""
    run_dir = write_run(
        tmp_path / "run", {"model": {"name": evil}},
        eval_samples=[{"step": 0, "prompt": evil, "completion": "<b>", "score": 0.0},
                      {"step": 5, "prompt": evil, "completion": "</td>&amp;", "score": 1.0}],
        samples=[{"step": 1, "prompt": evil, "completion": "<i>\n", "score": 1.0, "token_texts": ["<i>", "\n", ""],
                  "rewards": [0.0, 0.0, 1.0], "advantages": [-0.5, 0.0, 1.0]}])
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "<script" not in text and "<b>" not in text and "<i>" not in text and "</td>&amp;" not in text
    page = Page(text)
    assert page.find("td", "prompt")[0]["text"] == evil
    assert [e["text"] for e in page.find("span", "tok")] == ["<i>", "↵", "∅"]   # newline and empty made visible


def test_a_torn_last_line_is_skipped(tmp_path):
    run_dir = write_run(tmp_path / "run", metrics=metrics_records(3, kl=False))
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "reward/me')                   # a run killed mid-write
    assert write_report(run_dir).is_file()


# ---------------------------------------------------------------- the command line

def test_tokrl_report_prints_the_path(run, capsys):
    capsys.readouterr()
    assert main(["report", str(run[0])]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(run[0] / "report.html") and err == ""


@pytest.mark.parametrize("what", ["missing", "file", "not a run"])
def test_tokrl_report_of_bad_input_exits_2_with_one_line(tmp_path, capsys, what):
    target = tmp_path / "target"
    if what == "file":
        target.write_text("hello")
    elif what == "not a run":
        target.mkdir()
        (target / "notes.txt").write_text("hello")
    capsys.readouterr()
    assert main(["report", str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("tokrl: error:")
    assert str(target) in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ([] if what == "missing" else
                                                          ["target"] if what == "file" else ["notes.txt", "target"])


def test_a_multi_turn_samples_environment_tokens_are_greyed_and_get_no_credit(tmp_path):
    run_dir = write_run(
        tmp_path / "run",
        samples=[{"step": 1, "prompt": "guess:", "completion": "2 higher:3", "score": 1.0,
                  "token_texts": ["2", " higher:", "3"], "rewards": [0.0, 0.0, 1.0],
                  "advantages": [0.5, 0.0, 0.5], "policy": [1, 0, 1]}])
    page = Page(write_report(run_dir).read_text(encoding="utf-8"))
    cells = page.find("span", "cell")
    titles = [c["attrs"]["title"] for c in cells]
    assert titles[1].startswith("environment token 1: ' higher:'") and "advantage" not in titles[1]
    assert titles[0].startswith("token 0") and "advantage +0.500" in titles[0]
    styles = [t["attrs"]["style"] for t in page.find("span", "tok")]
    assert styles[1] == "background:#e2e8f0;color:#64748b" and styles[0] != styles[1]
    assert "grey: environment tokens" in page.find("div", "legend")[0]["text"]
