"""Collection's engine correction, by hand: which sequences leave the loss, and the mismatch metrics."""

import math

import pytest
import torch

from tokrl.training.collect import mask_outlier_sequences, mismatch_metrics


def test_a_sequence_whose_geometric_mean_ratio_leaves_the_cap_leaves_the_loss(make_rollout):
    # log ratios per row: row 0 mean 0.5 -> e^0.5 = 1.65 (inside [1/2, 2]); row 1 mean 1.0 -> 2.72 (outside);
    # row 2 mean -1.0 -> 0.37 (outside); its masked token (5.0) does not count
    train = torch.tensor([[0.5, 0.5], [1.0, 1.0], [-1.0, 5.0]])
    batch = make_rollout([[0.0, 1.0]] * 3, mask=[[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]], logprobs=train,
                         engine_logprobs=torch.zeros(3, 2))
    out = mask_outlier_sequences(batch, cap=2.0)
    assert out.mask.tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]


def test_mismatch_metrics_by_hand(make_rollout):
    # one row of 3 sampled tokens (the 4th is padding) with log ratios 0, ln 3, -ln 2
    train = torch.tensor([[0.0, math.log(3.0), -math.log(2.0), 9.0]])
    batch = make_rollout([[0.0] * 4], mask=[[1.0, 1.0, 1.0, 0.0]], logprobs=train, engine_logprobs=torch.zeros(1, 4))
    m = mismatch_metrics(batch, cap=2.0)
    # k3: r - 1 - log r = 0, 3 - 1 - ln 3, 0.5 - 1 + ln 2; mean over the 3 tokens
    k3 = (0.0 + (2.0 - math.log(3.0)) + (-0.5 + math.log(2.0))) / 3
    assert m["rollout/mismatch_kl"] == pytest.approx(k3)
    assert m["rollout/is_ratio_max"] == pytest.approx(3.0)
    assert m["rollout/is_truncated_frac"] == pytest.approx(1 / 3)          # only r = 3 is above C = 2
    # geometric mean ratio exp((0 + ln 3 - ln 2) / 3) = 1.5^(1/3) = 1.14: inside [1/2, 2]
    assert m["rollout/seqs_outside_cap"] == 0.0
