"""guess_number: the game's answers and rewards, its demonstrations, and the tiny model
learning it (tokrl/tasks/guess_number.py)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tokrl.config import SamplingConfig, load_config
from tokrl.tasks.guess_number import GuessNumber


def test_the_environment_answers_higher_lower_and_pays_for_few_turns():
    env = GuessNumber(n=8, penalty=0.1)
    assert env.reset({"prompt": "p", "secret": 6}) == "p"
    assert env.step("2") == (" higher:", 0.0, False, {})
    assert env.step("x7y") == (" lower:", 0.0, False, {})          # the turn's first integer is the guess
    assert env.step("no guess") == (" say a number:", 0.0, False, {})
    obs, reward, done, _ = env.step("6")
    assert (obs, done) == (None, True) and reward == pytest.approx(1.0 - 0.1 * 3)   # found at turn 4


def test_the_demonstration_is_a_binary_search_whose_answers_are_the_environments():
    env = GuessNumber(n=8)
    for secret in range(1, 9):
        turns = env.demonstration({"prompt": "p", "secret": secret})
        env.reset({"prompt": "p", "secret": secret})
        for k in range(0, len(turns), 2):
            obs, _, done, _ = env.step(turns[k])
            assert obs == (turns[k + 1] if k + 1 < len(turns) else None)
        assert done and len(turns) // 2 + 1 <= 4                     # ceil(log2(8 + 1)) = 4 guesses at most


def random_policy_reward(task, vocab: list[str], eos: str, cap: int, episodes: int = 4000) -> float:
    """Mean reward of a policy that writes uniformly random tokens (each turn at most ``cap``
    tokens, ended early by EOS), measured by playing ``episodes`` episodes."""
    rng, total = random.Random(0), 0.0
    for i in range(episodes):
        env = task.make(i)
        env.reset(task.examples("train")[i % 64])
        for _ in range(task.max_turns):
            turn = ""
            for _ in range(cap):
                token = rng.choice(vocab)
                if token == eos:
                    break
                turn += token
            obs, reward, done, _ = env.step(turn)
            total += reward
            if done or obs is None:
                break
    return total / episodes


@pytest.mark.slow
def test_the_tiny_model_learns_guess_number(tmp_path):
    from tokrl.generation.batch import rollout
    from tokrl.training.loop import train

    cfg = load_config("configs/guess_number.yaml", [f"train.output_dir={tmp_path / 'run'}", "train.save_model=false",
                                                    "log.report=false"])
    result = train(cfg, tmp_path / "run")
    state = result["state"]
    tok = state.tokenizer
    vocab = [tok.convert_ids_to_tokens(i) for i in range(len(tok)) if i != tok.pad_token_id]
    chance = random_policy_reward(state.task, vocab, tok.eos_token, cfg.sampling.max_new_tokens)
    test = state.task.examples("test")
    batch = rollout(state.learner.model, tok, state.task, test, 4, cfg.sampling, seeds=torch.arange(4 * len(test)))
    trained = float(batch.scores.mean())
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    print(f"guess_number: random policy {chance:.3f}, first steps {lines[0]['reward/mean']:.3f}, trained {trained:.3f}")
    assert chance < 0.15                                            # measured: 0.106
    assert trained > chance + 0.25                                  # measured: 0.466 (seed 0), 4.4x chance
    assert batch.mask.sum() < batch.lengths.sum()                   # the observations stayed out of the loss
