"""The frozen reference model that KL is measured against."""

from __future__ import annotations

import copy
from contextlib import nullcontext

from torch import nn

from tokrl.models.load import is_lora


class Reference:
    """The frozen initial policy that KL is measured against.

    Without LoRA it is a frozen copy of the policy. With LoRA it is the policy itself
    with its adapters disabled: the base weights never change, so no copy is needed.
    """

    def __init__(self, policy: nn.Module):
        self.shared = is_lora(policy)
        self.model = policy if self.shared else copy.deepcopy(policy).requires_grad_(False)

    def disabled_adapters(self):
        """The context in which ``self.model`` computes the reference distribution."""
        return self.model.disable_adapter() if self.shared else nullcontext()
