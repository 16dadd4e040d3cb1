"""Held-out evaluation and the before/after comparison."""

import pytest

from tokrl.training.evaluate import compare


def test_compare_pairs_by_prompt_with_a_normal_interval():
    before = [{"prompt": p, "score": s} for p, s in [("a", 0.0), ("b", 0.5), ("c", 1.0), ("d", 0.0)]]
    after = [{"prompt": p, "score": s} for p, s in [("d", 1.0), ("c", 1.0), ("b", 1.0), ("a", 0.5)]]
    out = compare(before, after)
    # paired differences a..d: 0.5, 0.5, 0.0, 1.0 -> mean 0.5, sd sqrt(1/6), half-width 1.96 sd / 2
    half = 1.96 * (1 / 6) ** 0.5 / 2
    assert out["n"] == 4
    assert out["reward"]["change"] == 0.5
    assert out["reward"]["ci95"] == pytest.approx([0.5 - half, 0.5 + half], abs=1e-4)
    # solved: b and d became solved, c stayed -> differences 0, 1, 0, 1 -> mean 0.5
    assert out["solved"]["change"] == 0.5


def test_compare_pairs_the_kth_record_of_a_repeated_prompt_with_the_kth():
    """A multi-turn task's prompts repeat (every guess_number episode has one prompt): the
    k-th record before pairs with the k-th after, not every one with the last."""
    before = [{"prompt": "p", "score": s} for s in (0.0, 1.0, 0.0)]
    after = [{"prompt": "p", "score": s} for s in (1.0, 1.0, 0.0)]
    out = compare(before, after)
    # differences 1, 0, 0 -> mean 1/3 (paired with the last record only, they would be 1, 1, 0)
    assert out["n"] == 3 and out["reward"]["change"] == pytest.approx(1 / 3, abs=1e-4)
