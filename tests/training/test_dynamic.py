"""Dynamic sampling and the signal metrics, by hand: which groups carry signal, which the
step keeps, how refill rounds are numbered, and the share of tokens and rows with an
advantage; then one real step on the tiny model."""

from __future__ import annotations

import pytest
import torch

from tokrl.config import ConfigError, load_config
from tokrl.training.collect import sample_batch, signal_metrics
from tokrl.training.dynamic import choose_groups, draw_rounds, dynamic_batch, group_rows, informative_groups
from tokrl.training.loop import train_step
from tokrl.training.state import build_state


def test_a_group_of_equal_scores_carries_no_signal():
    # G = 3: [1, 1, 1] equal; [0, 1, 0] differ; [0.5, 0.5 + 1e-7, 0.5] within 1e-6: equal
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5 + 1e-7, 0.5])
    assert informative_groups(scores, 3).tolist() == [False, True, False]


def test_the_first_informative_groups_in_prompt_order_are_kept():
    # groups 1, 2, 4, 5 carry signal; B = 3 wanted: 1, 2, 4 kept, 5 is surplus and dropped
    kept, trained = choose_groups(torch.tensor([False, True, True, False, True, True]), 3)
    assert kept.tolist() == [1, 2, 4] and trained.tolist() == [True, True, True]


def test_a_shortfall_is_filled_with_uninformative_groups_left_out_of_the_loss():
    # only group 2 carries signal; B = 3: the first two uninformative ones (0, 1) fill the batch
    kept, trained = choose_groups(torch.tensor([False, False, True, False]), 3)
    assert kept.tolist() == [0, 1, 2] and trained.tolist() == [False, False, True]


def test_group_rows_are_prompt_major():
    assert group_rows(torch.tensor([0, 2]), 3).tolist() == [0, 1, 2, 6, 7, 8]


def rounds_of(make_rollout, scores_per_round: list[list[float]], G: int = 2):
    """A fake step: round r's rows score scores_per_round[r] (one token each); returns
    (first round, roll, refill, calls) where calls records (examples, offset) of each refill."""
    def part(r: int, offset: int):
        s = scores_per_round[r]
        index = torch.arange(len(s) // G).repeat_interleave(G) + offset
        return make_rollout([[x] for x in s], group_size=G, prompt_index=index,
                            examples=[{"prompt": f"r{r}p{i // G}"} for i in range(len(s))])
    calls = []

    def roll(examples, offset):
        calls.append((examples, offset))
        return part(len(calls), offset)
    return part(0, 0), roll, (lambda: [f"refill {len(calls) + 1}"]), calls


def test_refill_rounds_continue_the_prompt_numbering_until_enough_groups_carry_signal(make_rollout):
    # B = 2, G = 2. Round 0: groups (1, 1) and (0, 1): one informative. Round 1: (0, 0), (0, 0):
    # none. Round 2: (1, 0), (1, 0): two more, 3 >= 2 found, so no round 3 is drawn
    first, roll, refill, calls = rounds_of(make_rollout, [[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0], [1, 0, 1, 0]])
    drawn, rounds = draw_rounds(first, roll, refill, wanted=2, max_resample=5)
    assert rounds == 3 and [offset for _, offset in calls] == [2, 4]     # prompts 2-3, then 4-5 of the step
    assert drawn.prompt_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    batch, record = dynamic_batch(first, *rounds_of(make_rollout, [[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0]])[1:3],
                                  wanted=2, max_resample=5)
    # informative groups 1 (round 0) and 4 (round 2, first of two): kept; group 5 is surplus
    assert batch.prompt_index.tolist() == [1, 1, 4, 4] and batch.group_size == 2
    assert record.rounds == 3 and record.trained.tolist() == [1.0] * 4
    assert [e["prompt"] for e in record.examples] == ["r0p1", "r2p0"]
    assert record.scores.tolist() == [1, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0]


def test_when_refills_run_out_the_step_trains_on_the_groups_found(make_rollout):
    # B = 2, max_resample = 1: round 0 has one informative group (1), round 1 none: 2 rounds,
    # group 0 (the first without signal) fills the batch and is left out of the loss
    first, roll, refill, calls = rounds_of(make_rollout, [[1, 1, 0, 1], [0, 0, 1, 1]])
    batch, record = dynamic_batch(first, roll, refill, wanted=2, max_resample=1)
    assert record.rounds == 2 and len(calls) == 1
    assert batch.prompt_index.tolist() == [0, 0, 1, 1] and record.trained.tolist() == [0.0, 0.0, 1.0, 1.0]


def test_no_refill_when_the_first_round_has_enough(make_rollout):
    first, roll, refill, calls = rounds_of(make_rollout, [[1, 0, 0, 1]])
    batch, record = dynamic_batch(first, roll, refill, wanted=2, max_resample=3)
    assert record.rounds == 1 and calls == [] and batch.prompt_index.tolist() == [0, 0, 1, 1]


def test_signal_metrics_by_hand(make_rollout):
    # 2 groups of G = 2 over 2 tokens; row 3's second token is padding (mask 0)
    # advantages: group 0 (scores 1, 1) zero; group 1 (0, 1): -0.5 and +0.5 on their tokens
    batch = make_rollout([[0.0, 1.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0]], mask=[[1, 1], [1, 1], [1, 1], [1, 0]],
                         advantages=[[0.0, 0.0], [0.0, 0.0], [-0.5, -0.5], [0.5, 9.0]], group_size=2)
    drawn = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])   # 4 groups drawn, one informative
    m = signal_metrics(batch, batch.scores, drawn)
    assert m["groups/zero_signal_frac"] == pytest.approx(3 / 4)
    assert m["groups/informative"] == 1.0
    assert m["advantage/nonzero_frac"] == pytest.approx(3 / 7)         # tokens with |A| >= 1e-6: 2 + 1 of 7
    assert m["advantage/zero_rows_frac"] == pytest.approx(2 / 4)        # rows 0 and 1


def test_dynamic_sampling_needs_groups(tiny_model_dir):
    with pytest.raises(ConfigError, match="train.dynamic_sampling .* train.group_size >= 2"):
        load_config("configs/reinforce.yaml", [f"model.name={tiny_model_dir}", "train.dynamic_sampling=true"])


def test_a_real_dynamic_step_keeps_informative_groups_and_draws_refills_with_their_own_seeds(tiny_model_dir):
    # the tiny model scores 0 almost everywhere at first: most groups agree, refills are drawn
    cfg = load_config("configs/grpo.yaml", [f"model.name={tiny_model_dir}", "train.prompts_per_step=4",
                                            "train.dynamic_sampling=true", "train.max_resample=2"])
    state = build_state(cfg)
    metrics, batch = train_step(state, cfg)
    rounds = int(metrics["dynamic_sampling/rounds"])
    assert 1 <= rounds <= 3 and state.sampler.position == 4 * rounds      # each round drew B = 4 prompts
    assert batch.num_sequences == 16 and batch.group_size == 4
    assert metrics["groups/informative"] == int(informative_groups(batch.scores, 4).sum())
    trained = (batch.mask.view(4, 4, -1).sum(dim=(1, 2)) > 0)                        # (B,) groups in the loss
    assert trained.tolist() == informative_groups(batch.scores, 4).tolist()
    # each kept row is sample g of prompt p of the step (p = 4r + i in round r), drawn with its own seed
    fresh = build_state(cfg)
    examples = fresh.sampler.sample(4 * rounds)
    again = [sample_batch(fresh.engine, fresh.tokenizer, fresh.task, examples[4 * r: 4 * r + 4], 0, cfg, 4 * r)
             for r in range(rounds)]
    for i in range(16):
        p, g = int(batch.prompt_index[i]), i % 4
        other = again[p // 4]
        row = (p % 4) * 4 + g
        assert int(other.prompt_index[row]) == p
        assert torch.equal(batch.tokens[i, : batch.lengths[i]], other.tokens[row, : other.lengths[row]])
