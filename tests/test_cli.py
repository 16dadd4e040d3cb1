"""The CLI: a short real training run and what it leaves behind; bad input exits 2 in one line.

Commands run in-process through ``tokrl.cli.main``; one test runs ``python -m tokrl``
in a subprocess to check the exit status and stderr a shell sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokrl.cli import main
from tokrl.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "reinforce.yaml"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def error_line(err: str, model_loaded: bool = False) -> str:
    """The one stderr line of a bad-input exit.

    Once a model has been loaded, transformers may have drawn its own progress
    bar on stderr before the error; otherwise the error line is all there is.
    """
    assert "Traceback" not in err, err
    lines = err.splitlines()
    if not model_loaded:
        assert len(lines) == 1, err
    assert sum(line.startswith("tokrl: error:") for line in lines) == 1, err
    assert lines[-1].startswith("tokrl: error:"), err
    return lines[-1]


def bad_input(capsys, argv: list[str], model_loaded: bool = False) -> str:
    """Run ``tokrl argv``; it must exit 2 with one error line, which is returned."""
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    return error_line(err, model_loaded)


# ---------------------------------------------------------------- one real training run
# ``trained_run`` (conftest.py): ``tokrl train`` of the recipe for 3 steps on the tiny model,
# (run_dir, overrides, exit status, stdout)

STEPS = 3


def test_train_exits_0_and_prints_a_json_summary(trained_run):
    run_dir, _, status, stdout = trained_run
    assert status == 0
    summary = json.loads(stdout)
    assert summary["run_dir"] == str(run_dir) and summary["steps"] == STEPS
    assert summary["stopped_early"] is False
    for key in ("eval_before", "eval_after"):
        assert set(summary[key]) == {"reward", "solved", "n"} and summary[key]["n"] == 64
        assert 0.0 <= summary[key]["reward"] <= 1.0


def test_run_directory_holds_the_documented_files(trained_run):
    run_dir = trained_run.run_dir
    assert {p.name for p in run_dir.iterdir()} == {"config.yaml", "metrics.jsonl", "samples.jsonl", "eval.jsonl",
                                                  "eval_samples.jsonl", "checkpoints", "model", "tb",
                                                  "report.html", "report-curves.png"}


def test_config_yaml_reloads_to_the_same_config(trained_run):
    run_dir, overrides, _, _ = trained_run
    assert load_config(run_dir / "config.yaml") == load_config(RECIPE, overrides)


def test_metrics_has_one_line_per_step(trained_run):
    metrics = read_jsonl(trained_run.run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert 0.0 <= m["reward/mean"] <= 1.0
        assert m["policy/entropy"] > 0.0    # a random policy over ~50 tokens is far from deterministic
        assert all(isinstance(v, (int, float)) for v in m.values())


def test_samples_hold_token_level_data(trained_run):
    samples = read_jsonl(trained_run.run_dir / "samples.jsonl")
    assert len(samples) == STEPS * 4                         # train.log_samples = 4 per step
    for s in samples:
        assert s["step"] in (1, 2, 3) and s["prompt"].endswith("=") and len(s["prompt"]) == 5
        assert len(s["tokens"]) == len(s["rewards"]) == len(s["advantages"]) <= 4   # capped at the target length
        # target_match pays 1/4 per matched token; the score is their sum
        assert all(r in (0.0, 0.25) for r in s["rewards"])
        assert s["score"] == pytest.approx(sum(s["rewards"]))


def test_eval_has_a_line_before_and_after(trained_run):
    before, after = read_jsonl(trained_run.run_dir / "eval.jsonl")
    assert before["step"] == 0 and after["step"] == STEPS
    assert before["n"] == after["n"] == 64


def test_saved_model_loads_with_transformers(trained_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(trained_run.run_dir / "model", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(trained_run.run_dir / "model", local_files_only=True)
    assert model.config.model_type == "llama" and tokenizer.eos_token == "<eos>"
    assert any(p.suffix == ".safetensors" for p in (trained_run.run_dir / "model").iterdir())


def test_eval_of_a_run_directory_reproduces_its_final_eval(trained_run, capsys):
    run_dir = trained_run.run_dir
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == str(run_dir / "model")          # the trained model, not the starting one
    assert result["split"] == "test" and result["n"] == 64
    # greedy decoding of the saved weights on the same 64 test prompts
    after = read_jsonl(run_dir / "eval.jsonl")[-1]
    assert result["reward"] == pytest.approx(after["reward"]) and result["solved"] == pytest.approx(after["solved"])


def test_eval_limit_and_split(trained_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained_run.run_dir), "--split", "train", "--limit", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "train" and result["n"] == 5


def test_generate_prints_one_json_line_per_prompt(tiny_model_dir, capsys):
    capsys.readouterr()
    argv = ["generate", str(tiny_model_dir), "ab=", "cab=", "--max-new-tokens", "4"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["prompt"] for r in records] == ["ab=", "cab="]
    assert all(len(r["completion"]) <= 4 for r in records)   # one character per token, specials dropped
    assert main(argv) == 0                                   # greedy by default: the same output again
    assert capsys.readouterr().out.splitlines() == lines


def test_overwrite_replaces_an_existing_run_directory(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("{}\n")          # an earlier run
    (run_dir / "stale.txt").write_text("old")
    argv = ["train", str(RECIPE), "train.max_steps=1", "train.prompts_per_step=2", "train.eval_samples=2",
            "train.save_model=false", f"train.output_dir={run_dir}", f"model.name={tiny_model_dir}",
            "--quiet", "--overwrite"]
    assert main(argv) == 0
    assert {p.name for p in run_dir.iterdir()} == {"config.yaml", "metrics.jsonl", "samples.jsonl", "eval.jsonl",
                                                   "eval_samples.jsonl", "checkpoints", "tb", "report.html",
                                                   "report-curves.png"}
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 1


# ---------------------------------------------------------------- bad input: exit 2, one line, no run directory
# (the cases here are the ones test_bad_input.py's table does not hold)

def test_existing_run_directory_without_overwrite_is_untouched(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    (run_dir / "model").mkdir()
    (run_dir / "model" / "weights").write_bytes(b"\x00\x01")
    before = tree(run_dir)
    line = bad_input(capsys, ["train", str(RECIPE), f"train.output_dir={run_dir}", f"model.name={tiny_model_dir}",
                              "--quiet"])
    assert "--overwrite" in line
    assert tree(run_dir) == before


def test_an_empty_run_directory_is_reused(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    argv = ["train", str(RECIPE), "train.max_steps=0", "train.eval_samples=1", "train.save_model=false",
            f"train.output_dir={run_dir}", f"model.name={tiny_model_dir}", "--quiet"]
    assert main(argv) == 0
    assert (run_dir / "config.yaml").is_file()


def test_bad_input_with_overwrite_keeps_the_old_run(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("{}\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    before = tree(run_dir)
    bad_input(capsys, ["train", str(RECIPE), "task.options.template=", f"model.name={tiny_model_dir}",
                       f"train.output_dir={run_dir}", "--quiet", "--overwrite"], model_loaded=True)
    assert tree(run_dir) == before


@pytest.mark.parametrize("option", ["task.options.length=0"])
def test_bad_task_is_bad_input(tiny_model_dir, tmp_path, capsys, option):
    out = tmp_path / "run"
    bad_input(capsys, ["train", str(RECIPE), option, f"model.name={tiny_model_dir}", f"train.output_dir={out}",
                       "--quiet"], model_loaded=True)
    assert not out.exists()


@pytest.mark.parametrize("option", [["--max-new-tokens", "-1"], ["--temperature", "-1"]])
def test_generate_rejects_bad_sampling_arguments(tiny_model_dir, capsys, option):
    # either fix is fine: main's one-line error, or an argparse error (also exit 2)
    try:
        status = main(["generate", str(tiny_model_dir), "ab=", *option])
    except SystemExit as e:
        status = e.code
    assert status == 2
    assert "Traceback" not in capsys.readouterr().err


def test_eval_of_a_missing_path(tmp_path, capsys):
    assert "not found" in bad_input(capsys, ["eval", str(tmp_path / "gone")])


def test_debug_mode_shows_the_exception(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKRL_DEBUG", "1")
    with pytest.raises(ConfigError, match="algo.bogus"):
        main(["train", str(RECIPE), "algo.bogus=1", f"train.output_dir={tmp_path / 'run'}"])


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--no-such-flag"])
    assert info.value.code == 2


def test_python_dash_m_reports_bad_input_in_one_line(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "TOKRL_DEBUG": ""}
    proc = subprocess.run([sys.executable, "-m", "tokrl", "train", str(RECIPE), "algo.bogus=1",
                           f"train.output_dir={out}", "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("tokrl: error: unknown config key 'algo.bogus'")
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n")
    assert "Traceback" not in proc.stderr
    assert not out.exists()
