"""TokenEnv: the gymnasium contract and the rewards of target_match episodes."""

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from tokrl.env import TokenEnv, encode_prompt
from tokrl.tasks.base import Task
from tokrl.tasks.target_match import TargetMatch


@pytest.fixture(scope="module")
def task(tokenizer):
    return TargetMatch(tokenizer, length=4, num_train=32, num_test=8)


def run(env, actions):
    """Step through ``actions``; returns the rewards and the last (terminated, truncated, info)."""
    rewards = []
    for a in actions:
        _, r, terminated, truncated, info = env.step(a)
        rewards.append(r)
        if terminated or truncated:
            break
    return rewards, terminated, truncated, info


def test_check_env_passes_cleanly(task, tokenizer):
    env = TokenEnv(task, tokenizer, max_new_tokens=8, max_prompt_tokens=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checker warning is a failure too
        check_env(env, skip_render_check=True)


def test_observation_layout(task, tokenizer):
    env = TokenEnv(task, tokenizer, max_new_tokens=8, max_prompt_tokens=16)
    example = task.examples("train")[0]
    obs, info = env.reset(options={"example": example})
    prompt = encode_prompt(tokenizer, example["prompt"])
    assert obs in env.observation_space
    assert obs["prompt_length"] == len(prompt) == 5            # "abcd=": one token per char
    assert obs["prompt_ids"][-5:].tolist() == prompt           # left-padded
    assert (obs["prompt_ids"][:-5] == tokenizer.pad_token_id).all()
    assert obs["length"] == 0 and (obs["tokens"] == tokenizer.pad_token_id).all()
    assert info["text"] == "" and info["example"] == example
    obs, *_ = env.step(example["target_ids"][0])
    assert obs["length"] == 1 and obs["tokens"][0] == example["target_ids"][0]
    assert TokenEnv.context(obs) == prompt + example["target_ids"][:1]


def test_reset_draws_examples_with_the_seeded_rng(task, tokenizer):
    env = TokenEnv(task, tokenizer, split="test")
    drawn = [env.reset(seed=s)[1]["example"]["prompt"] for s in range(6)]
    again = [env.reset(seed=s)[1]["example"]["prompt"] for s in range(6)]
    assert drawn == again
    assert set(drawn) <= {ex["prompt"] for ex in task.examples("test")}
    assert len(set(drawn)) > 1


def test_exact_target_earns_one_over_L_per_token(task, tokenizer):
    env = TokenEnv(task, tokenizer, max_new_tokens=16)
    example = task.examples("train")[3]
    env.reset(options={"example": example})
    rewards, terminated, truncated, info = run(env, example["target_ids"])
    L = len(example["target_ids"])
    assert rewards == pytest.approx([1 / L] * L)
    assert sum(rewards) == pytest.approx(1.0)
    assert terminated and not truncated and len(rewards) == L  # ends at the target length
    assert info["text"] == example["target"]


def test_wrong_tokens_earn_nothing(task, tokenizer):
    env = TokenEnv(task, tokenizer)
    example = task.examples("train")[0]
    env.reset(options={"example": example})
    wrong = [tokenizer.convert_tokens_to_ids("z")] * 4
    rewards, terminated, _, _ = run(env, wrong)
    assert rewards == [0.0] * 4 and terminated


def test_partial_match_pays_only_matching_positions(task, tokenizer):
    env = TokenEnv(task, tokenizer)
    example = task.examples("train")[0]
    env.reset(options={"example": example})
    z = tokenizer.convert_tokens_to_ids("z")
    ids = example["target_ids"]
    rewards, *_ = run(env, [ids[0], z, ids[2], z])
    assert rewards == pytest.approx([0.25, 0.0, 0.25, 0.0])


def test_eos_terminates_early(task, tokenizer):
    env = TokenEnv(task, tokenizer)
    example = task.examples("train")[0]
    env.reset(options={"example": example})
    rewards, terminated, truncated, info = run(env, [example["target_ids"][0], tokenizer.eos_token_id])
    assert rewards == pytest.approx([0.25, 0.0])
    assert terminated and not truncated
    assert info["text"] == example["target"][0]                # EOS is skipped in the text
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)                                            # the episode is over


def test_truncated_at_max_new_tokens(tokenizer):
    class Endless(Task):
        def examples(self, split):
            return [{"prompt": "go:"}]

    env = TokenEnv(Endless(), tokenizer, max_new_tokens=3)
    env.reset(seed=0)
    a = tokenizer.convert_tokens_to_ids("a")
    rewards, terminated, truncated, info = run(env, [a] * 10)
    assert len(rewards) == 3 and truncated and not terminated
    assert rewards == [0.0] * 3 and info["text"] == "aaa"


def test_task_end_wins_over_truncation_at_the_same_step(task, tokenizer):
    env = TokenEnv(task, tokenizer, max_new_tokens=4)          # target length is also 4
    example = task.examples("train")[0]
    env.reset(options={"example": example})
    _, terminated, truncated, _ = run(env, example["target_ids"])
    assert terminated and not truncated


class Shouting(Task):
    """Token reward 0.1 per "a"; sequence reward: the number of "b" in the text, at the end."""

    def __init__(self, tokenizer):
        self.a = tokenizer.convert_tokens_to_ids("a")

    def examples(self, split):
        return [{"prompt": "say:"}]

    def max_tokens(self, example):
        return 3

    def token_rewards(self, examples, completions):
        return [[0.1 if t == self.a else 0.0 for t in ids] for ids in completions]

    def sequence_rewards(self, examples, completions):
        return [float(text.count("b")) for text in completions]


def test_sequence_reward_paid_at_final_step_only(tokenizer):
    env = TokenEnv(Shouting(tokenizer), tokenizer)
    a, b = tokenizer.convert_tokens_to_ids(["a", "b"])
    env.reset(seed=0)
    rewards, terminated, _, _ = run(env, [b, a, b])
    assert terminated
    assert rewards == pytest.approx([0.0, 0.1, 2.0])           # "bab": 2 b's, paid at the end

    env.reset(options={"prompt": "say:"})                      # ended by EOS: paid on EOS
    rewards, *_ = run(env, [b, tokenizer.eos_token_id])
    assert rewards == pytest.approx([0.0, 1.0])

    env = TokenEnv(Shouting(tokenizer), tokenizer, max_new_tokens=2)  # ended by truncation
    env.reset(seed=0)
    rewards, _, truncated, _ = run(env, [a, b])
    assert truncated and rewards == pytest.approx([0.1, 1.0])


def test_long_prompt_raises(task, tokenizer):
    env = TokenEnv(task, tokenizer, max_prompt_tokens=4)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        env.reset(options={"prompt": "abcdefgh"})
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        env.reset(seed=0)                                      # "abcd=" is 5 tokens


def test_bad_action_and_step_before_reset(task, tokenizer):
    env = TokenEnv(task, tokenizer)
    with pytest.raises(RuntimeError):
        env.step(3)
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(len(tokenizer))
    obs, *_ = env.step(np.int64(3))                            # numpy ints are fine
    assert obs["length"] == 1


def test_episode_with_a_real_tiny_policy(tiny_model_dir):
    """A saved tokenizer and a real (random) Llama drive an episode through context()."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    task = TargetMatch(tokenizer, length=3, num_train=8, num_test=2)
    env = TokenEnv(task, tokenizer, max_new_tokens=6, max_prompt_tokens=8)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=1)
    target = info["example"]["target_ids"]
    total, chosen, done = 0.0, [], False
    while not done:
        with torch.no_grad():
            logits = model(torch.tensor([TokenEnv.context(obs)])).logits[0, -1]   # (V,)
        action = int(logits.argmax())
        obs, reward, terminated, truncated, info = env.step(action)
        total, done = total + reward, terminated or truncated
        chosen.append(action)
    matched = sum(a == t for a, t in zip(chosen, target))
    assert total == pytest.approx(matched / len(target))
    assert TokenEnv.context(obs)[-len(chosen):] == chosen
