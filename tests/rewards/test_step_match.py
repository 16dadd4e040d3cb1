"""step_match: per-step verdicts with the arithmetic written out, the token that is paid
(on a BPE tokenizer whose token straddles a step boundary), differences, and bad input."""

from __future__ import annotations

import pytest

from tokrl.rewards import RewardError, build_reward, call_rewards
from tokrl.rewards.step_match import judge_steps, parse_step

# "start at 7; add 5; double it; subtract 9": 7 + 5 = 12, 12 * 2 = 24, 24 - 9 = 15
RIGHT = ["7 + 5 = 12", "12 * 2 = 24", "24 - 9 = 15"]


def test_parse_step_by_hand():
    assert parse_step("7 + 5 = 12") == (7, "+", 5, 12)
    assert parse_step("  -3*2=-6 ") == (-3, "*", 2, -6)
    assert parse_step("24-9 = 15") == (24, "-", 9, 15)
    for bad in ("12", "7 + 5 = 12.", "seven + 5 = 12", "7 + 5 = 12 so", "7 x 5 = 35", ""):
        assert parse_step(bad) is None, bad


def test_judge_steps_right_chain_and_a_planted_error():
    assert judge_steps(RIGHT, RIGHT) == [True, True, True]
    # step 2 says 12 * 2 = 25 (right is 24); step 3 carries on rightly from 25 (25 - 9 = 16)
    # but its value is not the question's: wrong, as every step after the first wrong one
    assert judge_steps(RIGHT, ["7 + 5 = 12", "12 * 2 = 25", "25 - 9 = 16"]) == [True, False, False]
    # a later step that happens to be right is still wrong after a wrong one
    assert judge_steps(RIGHT, ["7 + 5 = 13", "12 * 2 = 24", "24 - 9 = 15"]) == [False, False, False]
    # the right result of a wrong operation: 12 + 12 = 24 is not "double it" written a op b = c
    assert judge_steps(RIGHT, ["7 + 5 = 12", "12 + 12 = 24"]) == [True, False]


def test_judge_steps_extra_missing_and_garbled_steps():
    # a fourth step past the three operations is wrong, even if its arithmetic holds (15 + 0 = 15)
    assert judge_steps(RIGHT, [*RIGHT, "15 + 0 = 15"]) == [True, True, True, False]
    # stopping early: the steps written are right
    assert judge_steps(RIGHT, RIGHT[:2]) == [True, True]
    assert judge_steps(RIGHT, ["7 + 5 = 12", "twelve doubled", "24 - 9 = 15"]) == [True, False, False]
    assert judge_steps(RIGHT, []) == []


def test_judge_steps_refuses_a_reference_that_is_no_step():
    with pytest.raises(ValueError, match="reference step 'start at 7' is not of the form 'a op b = c'"):
        judge_steps(["start at 7"], ["7 + 5 = 12"])


@pytest.fixture(scope="module")
def bpe():
    """A character BPE tokenizer with newline and one merge, '4' + '\\n' -> '4\\n': the token
    that ends "= 24" also writes the separator after it (the boundary trap)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1}
    for c in "0123456789 +-*=\n":
        vocab[c] = len(vocab)
    vocab["4\n"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("4", "\n")], unk_token=None))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


def rewards_of(tokenizer, texts, **options):
    reward = build_reward({"name": "step_match", **options}, tokenizer)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return ids, call_rewards([reward], ["p"] * len(texts), texts, ids, {"steps": [RIGHT] * len(texts)})["step_match"]


def test_paid_on_the_token_that_writes_each_step_s_last_character(bpe):
    # "7+5=12\n12*2=24\n24-9=15": tokens 7 + 5 = 1 2 \n | 1 2 * 2 = 2 [4\n] | 2 4 - 9 = 1 5
    # step 1 ends at token 5 ('2'), step 2 at token 13 ('4\n', straddling), step 3 at token 20 ('5')
    ids, (row,) = rewards_of(bpe, ["7+5=12\n12*2=24\n24-9=15"])
    assert len(ids[0]) == 21 and bpe.decode([ids[0][13]]) == "4\n"
    assert {t: r for t, r in enumerate(row) if r} == {5: 1.0, 13: 1.0, 20: 1.0}
    assert sum(row) == 3.0
    # differences: v = 1, 1, 1 -> paid 1, 0, 0 (the return is the last verdict)
    _, (diff,) = rewards_of(bpe, ["7+5=12\n12*2=24\n24-9=15"], differences=True)
    assert {t: r for t, r in enumerate(diff) if r} == {5: 1.0}


def test_a_wrong_step_pays_zero_and_differences_take_the_credit_back(bpe):
    # step 2 "12*2=25" wrong (no merge: '5' is token 13), step 3 "25-9=16" ends at token 21
    _, (row,) = rewards_of(bpe, ["7+5=12\n12*2=25\n25-9=16"])
    assert {t: r for t, r in enumerate(row) if r} == {5: 1.0}
    _, (diff,) = rewards_of(bpe, ["7+5=12\n12*2=25\n25-9=16"], differences=True)
    assert {t: r for t, r in enumerate(diff) if r} == {5: 1.0, 13: -1.0} and len(diff) == 22


def test_no_separator_is_one_step_and_blank_text_earns_nothing(bpe):
    _, rows = rewards_of(bpe, ["7 + 5 = 12", "7 + 5 = 12 12 * 2 = 24", "  "])
    assert rows[0] == [0.0] * 9 + [1.0]               # "7 + 5 = 12": one step, right, paid at its '2'
    assert rows[1] == [0.0] * 22                        # one garbled step: wrong
    assert rows[2] == [0.0, 0.0]


def test_another_separator_and_bad_input_is_one_line(tokenizer):
    # the tiny character tokenizer has no newline: steps joined by ","
    reward = build_reward({"name": "step_match", "separator": ","}, tokenizer)
    text = "7+5=12,12*2=24"
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"]]
    (row,) = call_rewards([reward], ["p"], [text], ids, {"steps": [RIGHT]})["step_match"]
    assert {t: r for t, r in enumerate(row) if r} == {5: 1.0, 13: 1.0}
    with pytest.raises(RewardError, match=r"^reward 'step_match' failed: ValueError: reference step 'start at 7'"):
        call_rewards([reward], ["p"], [text], ids, {"steps": [["start at 7"]]})
    with pytest.raises(RewardError, match="must hold a list of steps"):
        call_rewards([reward], ["p"], [text], ids, {"steps": ["7 + 5 = 12"]})
    with pytest.raises(RewardError, match="step_match: it needs the policy's tokenizer"):
        build_reward({"name": "step_match"})
    with pytest.raises(RewardError, match="unknown option 'column_name' for reward step_match"):
        build_reward({"name": "step_match", "column_name": "x"}, tokenizer)
