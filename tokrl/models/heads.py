"""The value head that turns the policy into an actor-critic."""

from __future__ import annotations

from torch import Tensor, nn


class ValueHead(nn.Module):
    """V(s_t) from the policy trunk's last hidden state: one linear layer, zero-initialised
    so the first baseline is 0 and the first update is plain REINFORCE."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden: (N, T, H) -> (N, T) float32."""
        return self.linear(hidden.float()).squeeze(-1)
