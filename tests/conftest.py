"""Shared fixtures: one tiny random model per session, a private model cache, the
character tokenizer, the tiny model loaded as a policy, a Rollout factory, and one
real short training run.

No test writes to ~/.cache: ``TOKRL_CACHE`` points at a session temp directory
for the whole run (set before any test, restored after the last one).

Tests are laid out like the package: ``tests/<package>/test_<module>.py`` tests
``tokrl/<package>/<module>.py`` and ``tests/test_<module>.py`` a top-level module.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import NamedTuple

import pytest

from tokrl.models.tiny import make_tiny_model, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _private_tokrl_cache(tmp_path_factory):
    """$TOKRL_CACHE -> a session temp dir (built-in models are built there, never in ~)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKRL_CACHE", str(tmp_path_factory.mktemp("tokrl-cache")))
        yield


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two
    threads spin against each other (20x slower measured): tests run on one. A test of
    the real model sets its own count; it is restored afterwards."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + character tokenizer saved as a Hugging Face model directory."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny models' character tokenizer (``tokrl.models.tiny.make_tokenizer``), the same
    one ``tiny_model_dir`` holds: <pad>=0 <eos>=1 <bos>=2, then one id per character from 3."""
    return make_tokenizer()


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    """The tiny model as tokrl loads a policy (tokrl's attention), in eval mode: (model, tokenizer)."""
    from tokrl.config import ModelConfig
    from tokrl.models.load import load_policy

    model, tokenizer = load_policy(ModelConfig(name=str(tiny_model_dir)))
    return model.eval(), tokenizer


# ---------------------------------------------------------------- a hand-made Rollout

def _tensor(value):
    import torch

    return torch.tensor(value) if isinstance(value, (list, tuple)) else value


def _make_rollout(rewards, mask=None, **fields):
    """A Rollout of N rows and T tokens from its rewards (N, T), nested lists or a tensor.

    What is not given: mask all ones, lengths the mask's row sums, tokens 0, one prompt
    token 0 (real), log-probs and entropies 0, group_size 1. Any other field of Rollout is
    passed through; tensor fields may be given as nested lists.
    """
    import torch

    from tokrl.types import Rollout

    rewards = _tensor(rewards)
    mask = torch.ones_like(rewards) if mask is None else _tensor(mask)
    N, T = rewards.shape
    given = {name: value if name in ("texts", "examples") else _tensor(value) for name, value in fields.items()}
    fields = {"tokens": torch.zeros(N, T, dtype=torch.long), "lengths": mask.sum(1).long(),
              "prompt_ids": torch.zeros(N, 1, dtype=torch.long), "logprobs": torch.zeros(N, T),
              "entropy": torch.zeros(N, T), **given}
    fields.setdefault("prompt_mask", torch.ones_like(fields["prompt_ids"]))
    return Rollout(rewards=rewards, mask=mask, **fields)


@pytest.fixture
def make_rollout():
    """The Rollout factory: ``make_rollout(rewards, mask=None, **fields)`` (see ``_make_rollout``)."""
    return _make_rollout


# ---------------------------------------------------------------- one real training run

RUN_RECIPE = ROOT / "configs" / "reinforce.yaml"
RUN_STEPS = 3


class TrainedRun(NamedTuple):
    run_dir: Path
    overrides: list[str]
    """the overrides of RUN_RECIPE it was trained with"""
    status: int
    stdout: str


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir, tmp_path_factory) -> TrainedRun:
    """``tokrl train configs/reinforce.yaml`` for 3 steps on the tiny model, in-process.

    Everything else is the recipe's and the defaults, which the tests rely on: 32 prompts
    a step, 64 held-out prompts evaluated before and after (no evaluation in between), 4
    samples logged a step, a checkpoint after every step (the newest two kept:
    step-00000002 and step-00000003), the exported model, TensorBoard event files (tb/)
    and the report. Shared by test_cli.py, test_bad_input.py and runs/test_report.py:
    read it, never write it (a test that changes a run, resumes it or rewrites its
    report, copies it first).
    """
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    overrides = [f"train.max_steps={RUN_STEPS}", "train.checkpoint_every=1", f"train.output_dir={run_dir}",
                 f"model.name={tiny_model_dir}"]
    from tokrl.cli import main

    stdout = io.StringIO()
    with _torch_threads(1), contextlib.redirect_stdout(stdout):
        status = main(["train", str(RUN_RECIPE), *overrides, "--quiet"])
    return TrainedRun(run_dir, overrides, status, stdout.getvalue())
