"""Turn bookkeeping: where turns end, where rewards land, the observation's ids, the limits,
and a misbehaving environment (tokrl/generation/turns.py)."""

from __future__ import annotations

import time

import pytest

from tokrl.generation.turns import EpisodeError, ObservationFormat, Turns, chat_markers
from tokrl.models.tiny import make_tokenizer
from tokrl.tasks.base import Environment
from tokrl.tasks.multiturn import EnvironmentTask

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 =:>+-*?.,</"


class Echo(Environment):
    """Answers each turn with " ok:" and pays the turn's length; ends after ``turns`` turns."""

    name = "echo"
    stop = ("</",)

    def __init__(self, turns: int = 2):
        self.turns, self.seen = turns, []

    def step(self, turn):
        self.seen.append(turn)
        done = len(self.seen) >= self.turns
        return (None if done else " ok:"), float(len(turn)), done, {}


def make_turns(env, tokenizer, max_turns=4, budget=64, turn_cap=8, skip=False, timeout=2.0):
    task = EnvironmentTask(tokenizer, env, max_turns=max_turns, max_episode_tokens=budget, step_timeout=timeout)
    return Turns(task, tokenizer, [env], ObservationFormat(tokenizer, chat=False), turn_cap, skip)


def play(turns: Turns, text: str) -> None:
    """Feed the policy's characters one by one (observation ids are fed whenever queued)."""
    tok = turns.tokenizer
    for ch in text:
        while turns.forced(0) is not None and not turns.done(0):
            turns.add(0, turns.forced(0), 0.0, 0.0)
        if turns.done(0):
            return
        turns.add(0, tok.convert_tokens_to_ids(ch) if ch != "$" else tok.eos_token_id, -1.0, 2.0)


def test_a_stop_string_ends_the_turn_and_the_observation_follows_with_mask_0():
    tok = make_tokenizer(CHARS)
    env = Echo(turns=2)
    turns = make_turns(env, tok)
    play(turns, "ab</cd$")
    ep = turns.episodes[0]
    assert env.seen == ["ab</", "cd"]                 # EOS ends the second turn; "$" is EOS
    n_obs = len(" ok:")
    assert ep.policy == [1.0] * 4 + [0.0] * n_obs + [1.0] * 3
    assert tok.decode(ep.ids[4:4 + n_obs]) == " ok:"
    # each turn's reward (its text length) on its last token; nothing elsewhere
    assert ep.rewards == [0, 0, 0, 4.0] + [0.0] * n_obs + [0, 0, 2.0]
    assert ep.logprobs[4:8] == [0.0] * 4 and ep.entropy[4:8] == [0.0] * 4
    assert ep.done and not ep.truncated and ep.turns == 2


def test_max_turns_and_the_token_budget_truncate_the_episode():
    tok = make_tokenizer(CHARS)
    turns = make_turns(Echo(turns=10), tok, max_turns=2)
    play(turns, "a$b$c$")
    assert turns.episodes[0].turns == 2 and turns.episodes[0].truncated
    turns = make_turns(Echo(turns=10), tok, budget=6, turn_cap=3)
    play(turns, "abcdefgh")
    ep = turns.episodes[0]
    # turn 1: 3 tokens (the turn cap); its answer " ok:" (4 ids) would leave no room
    assert len(ep.ids) == 3 and ep.truncated and ep.turns == 1


def test_observation_ids_are_never_re_tokenized_with_the_policy_ids():
    """BPE merges "1"+"2" into "12": a policy that wrote "1" followed by an observation "2"
    keeps its own id; re-tokenizing the decoded conversation would give the merged one."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "1": 2, "2": 3, " ": 4, "12": 5}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("1", "2")], unk_token=None))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")

    class Two(Echo):
        def step(self, turn):
            return "2", 0.0, False, {}
    turns = make_turns(Two(), tok, max_turns=2, turn_cap=1)
    turns.add(0, vocab["1"], 0.0, 0.0)              # turn 1: "1", ended by the turn cap
    while turns.forced(0) is not None:
        turns.add(0, turns.forced(0), 0.0, 0.0)
    ids = turns.episodes[0].ids
    assert ids == [vocab["1"], vocab["2"]]
    assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == [vocab["12"]]   # would differ


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_in_a_chat_an_observation_is_a_user_turn_between_the_templates_markers():
    tok = make_tokenizer(CHARS + "\n")
    tok.chat_template = CHATML
    close, before, after = chat_markers(tok)
    assert (close, before, after) == ("<|im_end|>\n", "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n")
    tok.eos_token = "<|im_end|>"
    fmt = ObservationFormat(tok, chat=True)
    # the policy's EOS (<|im_end|>) closed its turn already; a stop string did not
    assert fmt.text("42", ended_with_eos=True) == "\n<|im_start|>user\n42<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.text("42", ended_with_eos=False).startswith("<|im_end|>\n<|im_start|>user\n42")
    assert ObservationFormat(tok, chat=False).text("42", True) == "42"


class Raises(Echo):
    def step(self, turn):
        raise KeyError("boom")


class NotText(Echo):
    def step(self, turn):
        return 42, 0.0, False, {}


class Slow(Echo):
    def step(self, turn):
        time.sleep(1.0)
        return "x", 0.0, False, {}


@pytest.mark.parametrize("env, message", [
    (Raises(), "environment echo at turn 1: step raised KeyError: 'boom'"),
    (NotText(), "environment echo at turn 1: step returned an observation of type int"),
    (Slow(), "environment echo at turn 1: step took longer than task.options.step_timeout=0.2 s"),
])
def test_a_misbehaving_environment_is_a_one_line_error_naming_it_and_the_turn(env, message):
    tok = make_tokenizer(CHARS)
    with pytest.raises(EpisodeError) as e:
        play(make_turns(env, tok, timeout=0.2), "a$")
    assert message in str(e.value) and "\n" not in str(e.value)
    skipped = make_turns(type(env)(), tok, timeout=0.2, skip=True)
    play(skipped, "a$b$")
    assert skipped.episodes[0].done and message in skipped.episodes[0].error
