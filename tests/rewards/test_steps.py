"""Steps and the tokens that end them: spans and offsets by hand, the tiny tokenizer's
ids, per-token scores that agree with the sequence score, and padding that changes nothing."""

from __future__ import annotations

import pytest
import torch

from tokrl.rewards.steps import (
    encode_solution,
    gather_steps,
    join_steps,
    last_tokens,
    score_steps,
    split_steps,
    step_logits,
)

A, B, C, COMMA, EQ = 3, 4, 5, 48, 40          # tiny tokenizer ids of 'a', 'b', 'c', ',', '='


def test_join_and_split_by_hand():
    assert join_steps(["ab", "c", "de"], ", ") == ("ab, c, de", [(0, 2), (4, 5), (7, 9)])
    with pytest.raises(ValueError, match="step 2 of 2 is empty"):
        join_steps(["ab", ""], ",")
    # empty pieces are no steps; a text without a separator is one step
    assert split_steps("ab\n\nc\n", "\n") == [(0, 2), (4, 5)]
    assert split_steps("abc", "\n") == [(0, 3)] and split_steps("\n\n", "\n") == []


def test_last_tokens_by_hand():
    # tokens "a" | "bc" | "," | "d": the step "abc" (end 3) ends in token 1, "d" (end 5) in token 3
    offsets = [(0, 1), (1, 3), (3, 4), (4, 5)]
    assert last_tokens(offsets, [3, 5]) == [1, 3]
    # a token straddling the boundary ("c," at 2..4) still holds the step's last character
    assert last_tokens([(0, 1), (1, 2), (2, 4), (4, 5)], [3, 5]) == [2, 3]
    with pytest.raises(ValueError, match="no token ends"):
        last_tokens([(1, 2)], [1])


def test_encode_solution_on_the_tiny_tokenizer(tokenizer):
    # prompt "c=" (2 ids), then "ab,c": a=2 b=3 ,=4 c=5 in the whole sequence
    ids, positions = encode_solution(tokenizer, "c=", ["ab", "c"], ",", max_length=None)
    assert ids == [C, EQ, A, B, COMMA, C] and positions == [3, 5]
    # cut to 3 tokens from the left: ",c" survives, the first step's last token is gone
    assert encode_solution(tokenizer, "c=", ["ab", "c"], ",", max_length=3) == ([B, COMMA, C], [0, 2])
    assert encode_solution(tokenizer, "c=", ["ab", "c"], ",", max_length=2) == ([COMMA, C], [-1, 1])


def test_gather_steps_by_hand():
    scores = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    assert gather_steps(scores, [[1, 2], [-1, 0]]).tolist() == [1.0, 2.0, 3.0]


@pytest.fixture(scope="module", params=["classifier", "scalar_head"])
def prm(request, tiny_model_dir):
    from tokrl.rewards.model import init_reward_model

    torch.manual_seed(0)
    model, tokenizer = init_reward_model(tiny_model_dir, request.param, level="step")
    if model.head is not None:
        torch.nn.init.normal_(model.head.linear.weight)           # a head that is not all zeros
    return model.eval(), tokenizer


def test_a_step_score_is_the_score_of_the_text_up_to_that_step(prm):
    model, tokenizer = prm
    with torch.no_grad():
        logits, positions = step_logits(model, tokenizer, ["c="], [["ab", "ba", "c"]], ",")
    assert positions == [[3, 6, 8]]
    # the head at the last token of step k sees exactly the prompt and steps 1..k
    for k, text in enumerate(["ab", "ab,ba", "ab,ba,c"]):
        alone = model.score(tokenizer, ["c="], [text])[0]
        assert float(logits[k]) == pytest.approx(alone, abs=1e-5)


def test_padding_does_not_change_step_scores_and_a_bad_separator_is_refused(prm):
    model, tokenizer = prm
    alone = score_steps(model, tokenizer, ["c="], [["ab", "c"]], ",")
    batched = score_steps(model, tokenizer, ["c=", "abcabc="], [["ab", "c"], ["a", "bcabcabc", "a"]], ",",
                          batch_size=2)
    assert batched[0] == pytest.approx(alone[0], abs=1e-5) and len(batched[1]) == 3
    assert all(0.0 < p < 1.0 for p in batched[1])
    with pytest.raises(ValueError, match="no token for the step separator '\\\\n'"):
        score_steps(model, tokenizer, ["c="], [["ab", "c"]], "\n")      # the tiny tokenizer drops newlines
