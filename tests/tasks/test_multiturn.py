"""Building multi-turn tasks (tokrl/tasks/multiturn.py): built-in environments by name, a
user environment by import path (a class or a factory), tokrl's limits apart from the
environment's options, and bad options."""

from __future__ import annotations

import sys

import pytest

from tokrl.tasks import EnvironmentTask, GuessNumber, build_task

USER_ENV = '''
from tokrl.env import Environment

class Countdown(Environment):
    name = "countdown"

    def __init__(self, start=3):
        self.start, self.left = start, start

    def examples(self, split):
        return [{"prompt": "count:"}]

    def step(self, turn):
        self.left -= 1
        return (None if self.left == 0 else str(self.left)), 1.0, self.left == 0, {}

def make_countdown(start):
    return Countdown(start=start * 2)
'''


@pytest.fixture
def user_env(tmp_path, monkeypatch):
    (tmp_path / "my_envs.py").write_text(USER_ENV)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_envs", raising=False)
    yield
    sys.modules.pop("my_envs", None)


def test_a_built_in_environment_by_name_with_limits_apart_from_its_options(tokenizer):
    task = build_task("guess_number", tokenizer, n=5, max_turns=7, max_episode_tokens=50, step_timeout=2.0)
    assert isinstance(task, EnvironmentTask) and isinstance(task.environment, GuessNumber)
    assert (task.name, task.environment.n, task.max_turns, task.max_episode_tokens, task.step_timeout) == \
        ("guess_number", 5, 7, 50, 2.0)


def test_each_episode_gets_a_fresh_seeded_copy(tokenizer):
    task = build_task("guess_number", tokenizer)
    a, b = task.make(3), task.make(3)
    assert a is not b and a is not task.environment
    assert a.rng.random() == b.rng.random() != task.make(4).rng.random()


def test_a_user_environment_by_import_path_a_class_or_a_factory(tokenizer, user_env):
    task = build_task("my_envs:Countdown", tokenizer, start=2, max_turns=3)
    assert (task.name, task.environment.start, task.max_turns) == ("countdown", 2, 3)
    made = build_task("my_envs:make_countdown", tokenizer, factory={"start": 2})
    assert made.environment.start == 4


@pytest.mark.parametrize("name, options, message", [
    ("my_envs:Nope", {}, "task.name 'my_envs:Nope': module my_envs has no 'Nope'"),
    ("my_envs:Countdown", {"size": 3}, "task my_envs:Countdown: bad task.options for the environment"),
    ("my_envs:Countdown", {"max_turns": 0}, "max_turns and max_episode_tokens must be >= 1"),
    ("my_envs:make_countdown", {"factory": 3}, "task.options.factory must be a mapping"),
])
def test_bad_user_environments_are_one_line_errors(tokenizer, user_env, name, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build_task(name, tokenizer, **options)


def test_the_readme_user_environment_trains_without_touching_tokrl(tiny_model_dir, tmp_path):
    """examples/letters.py, the environment README shows, named by file path in a recipe."""
    import json
    from pathlib import Path

    from tokrl.cli import main

    root = Path(__file__).resolve().parents[2]
    example = root / "examples" / "letters.py"
    code = example.read_text()
    body = code[code.index("import itertools"):]
    assert body in (root / "README.md").read_text()               # README shows this very file
    out = tmp_path / "run"
    status = main(["train", str(root / "configs" / "guess_number.yaml"), f"model.name={tiny_model_dir}",
                   f"task.name={example}:Letters", "task.options={}", "task.options.max_turns=4",
                   "train.max_steps=3", "train.eval_samples=4", "train.save_model=false", "log.report=false",
                   f"train.output_dir={out}", "--quiet"])
    assert status == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(m["episode/turns"] > 1 for m in metrics)
    assert all(m["episode/env_token_frac"] > 0 for m in metrics)
