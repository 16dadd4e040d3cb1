"""The value head."""

import torch

from tokrl.models.heads import ValueHead


def test_value_head_starts_at_zero():
    head = ValueHead(8)
    assert head(torch.randn(2, 3, 8)).abs().sum() == 0
    assert head(torch.randn(2, 3, 8)).shape == (2, 3)
