"""Steps and the tokens that end them: spans and offsets by hand, the tiny tokenizer's
ids, per-token scores that agree with the sequence score, and padding that changes nothing."""

from __future__ import annotations

from pathlib import Path

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
ROOT = Path(__file__).resolve().parents[2]


def test_join_and_split_by_hand():
    assert join_steps(["ab", "c", "de"], ", ") == ("ab, c, de", [(0, 2), (4, 5), (7, 9)])
    with pytest.raises(ValueError, match="step 2 of 2 is empty"):
        join_steps(["ab", ""], ",")
    # empty and blank pieces are no steps; a text without a separator is one step
    assert split_steps("ab\n\nc\n", "\n") == [(0, 2), (4, 5)]
    assert split_steps("ab\n \nc", "\n") == [(0, 2), (5, 6)]
    assert split_steps("abc", "\n") == [(0, 3)] and split_steps("\n \n", "\n") == []


def test_last_tokens_by_hand():
    # tokens "a" | "bc" | "," | "d": the step "abc" (end 3) ends in token 1, "d" (end 5) in token 3
    offsets = [(0, 1), (1, 3), (3, 4), (4, 5)]
    assert last_tokens(offsets, [3, 5]) == [1, 3]
    # a token straddling the boundary ("c," at 2..4) still holds the step's last character
    assert last_tokens([(0, 1), (1, 2), (2, 4), (4, 5)], [3, 5]) == [2, 3]
    with pytest.raises(ValueError, match="no token ends"):
        last_tokens([(1, 2)], [1])


def test_encode_solution_on_the_tiny_tokenizer(tokenizer):
    # prompt "c=" (2 ids), then ",ab,c" (the separator parts prompt and first step): b=4 c=6
    ids, positions = encode_solution(tokenizer, "c=", ["ab", "c"], ",", max_length=None)
    assert ids == [C, EQ, COMMA, A, B, COMMA, C] and positions == [4, 6]
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
    assert positions == [[4, 7, 9]]                 # "c=" then ",ab,ba,c"
    # the head at the last token of step k sees exactly the prompt, the separator and steps 1..k
    for k, text in enumerate([",ab", ",ab,ba", ",ab,ba,c"]):
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


# ---------------------------------------------------------------- a PRM as a dense reward

EOS = 1


def test_token_char_ends_and_step_positions_by_hand(tokenizer):
    from tokrl.rewards.steps import step_token_positions, token_char_ends

    # "ab,c" then EOS: the prefixes decode to "a", "ab", "ab,", "ab,c", "ab,c"
    assert token_char_ends(tokenizer, [A, B, COMMA, C, EOS]) == [1, 2, 3, 4, 4]
    # steps (0, 2) "ab" and (3, 4) "c" end at the tokens that write 'b' and 'c'
    assert step_token_positions([1, 2, 3, 4, 4], [(0, 2), (3, 4)]) == [1, 3]
    # a token writing two characters ("bc" at 1..3) ends the step whose last character it writes
    assert step_token_positions([1, 3, 4, 6], [(0, 3), (4, 6)]) == [1, 3]


@pytest.fixture(scope="module")
def prm_dir(tiny_model_dir, tmp_path_factory):
    """An (untrained) step-level reward model trained with the separator ','."""
    from tokrl.offline.process_reward import ProcessRewardConfig, prepare, save
    from tokrl.tasks.data import write_jsonl

    tmp = tmp_path_factory.mktemp("prm")
    write_jsonl(tmp / "s.jsonl", [{"prompt": "a=", "completions": ["ab", "c"], "labels": [True, False]}] * 2)
    run = prepare(ProcessRewardConfig(data=str(tmp / "s.jsonl"), model=str(tiny_model_dir), head="scalar_head",
                                      step_separator=","))
    torch.nn.init.normal_(run.model.head.linear.weight)
    save(run, tmp / "prm", {"step_separator": ","})
    return tmp / "prm"


def test_a_prm_pays_each_step_on_its_last_token(prm_dir, tokenizer):
    from tokrl.rewards import TOKEN, build_reward, call_rewards
    from tokrl.rewards.model import load_reward_model

    model, prm_tokenizer = load_reward_model(prm_dir, level="step")
    p1, p2 = score_steps(model, prm_tokenizer, ["c="], [["ab", "c"]], ",")[0]
    (q,) = score_steps(model, prm_tokenizer, ["c="], [["abc"]], ",")[0]
    completions, ids = ["ab,c", "abc", ""], [[A, B, COMMA, C, EOS], [A, B, C], [EOS]]

    plain = build_reward({"reward_model": str(prm_dir), "level": "step", "label": "prm"}, tokenizer)
    assert (plain.name, plain.level) == ("prm", TOKEN)
    got = call_rewards([plain], ["c="] * 3, completions, ids, {})["prm"]
    # the separator comes from the PRM (','); no separator: one step; no text: nothing paid
    assert got[0] == pytest.approx([0.0, p1, 0.0, p2, 0.0], abs=1e-6)
    assert got[1] == pytest.approx([0.0, 0.0, q], abs=1e-6) and got[2] == [0.0]

    diff = build_reward({"reward_model": str(prm_dir), "level": "step", "differences": True}, tokenizer)
    got = call_rewards([diff], ["c="] * 3, completions, ids, {})["reward_model"]
    # p1 − 0 on 'b', p2 − p1 on 'c': the return telescopes to the last step's score
    assert got[0] == pytest.approx([0.0, p1, 0.0, p2 - p1, 0.0], abs=1e-6)
    assert sum(got[0]) == pytest.approx(p2, abs=1e-6)


def test_step_and_sequence_levels_refuse_each_other(prm_dir, tiny_model_dir, tokenizer, tmp_path):
    from tokrl.offline.reward_model import RewardModelConfig, prepare, save
    from tokrl.rewards import RewardError, build_reward

    with pytest.raises(ValueError, match="is a step-level reward model"):
        build_reward({"reward_model": str(prm_dir)}, tokenizer)
    save(prepare(RewardModelConfig(data=str(ROOT / "examples" / "prefs.jsonl"), model=str(tiny_model_dir))),
         tmp_path / "rm", {})
    with pytest.raises(ValueError, match="is a sequence-level reward model, not a step-level one"):
        build_reward({"reward_model": str(tmp_path / "rm"), "level": "step"}, tokenizer)
    with pytest.raises(RewardError, match="level must be sequence or step, got 'token'"):
        build_reward({"reward_model": str(prm_dir), "level": "token"}, tokenizer)
    with pytest.raises(RewardError, match="unknown option 'shift'"):
        build_reward({"reward_model": str(prm_dir), "level": "step", "shift": 1}, tokenizer)
    with pytest.raises(RewardError, match="needs the policy's tokenizer"):
        build_reward({"reward_model": str(prm_dir), "level": "step"})


def test_rl_with_step_rewards_end_to_end(prm_dir, tiny_model_dir, tmp_path, monkeypatch):
    import json

    from ..offline.helpers import cli

    monkeypatch.chdir(ROOT)
    status, stdout, stderr = cli(["train", "examples/reward_model_rl.yaml", f"model.name={tiny_model_dir}",
                                  f"task.options.rewards=[{{reward_model: {prm_dir}, level: step, step_separator: "
                                  f"',', differences: true}}, {{name: length, target: 4, weight: 0.1}}]", "train.max_steps=2",
                                  "train.prompts_per_step=4", "train.eval_samples=4", "train.save_model=false",
                                  f"train.output_dir={tmp_path / 'run'}", "--quiet"])
    assert status == 0, stderr
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all("rewards/reward_model" in m and "rewards/length" in m for m in metrics)
    assert all(0.0 <= m["rewards/reward_model"] <= 1.0 for m in metrics)      # a return telescopes to a p
    # the samples (and so the report's heatmap strip) hold the step rewards: nonzero only where a step
    # ends (before a ',' or at the end), plus the length reward on the last token
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples
    for s in samples:
        ends = {t for t, text in enumerate(s["token_texts"]) if text not in (",", "<eos>")
                and (t + 1 == len(s["token_texts"]) or s["token_texts"][t + 1] in (",", "<eos>"))}
        paid = {t for t, r in enumerate(s["rewards"]) if r != 0.0}
        assert paid <= ends | {len(s["rewards"]) - 1}, s
