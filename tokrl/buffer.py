"""ExperienceBuffer: store rollouts, hand out shuffled minibatches, track staleness.

On-policy recipes (PG, PPO, GRPO) call ``clear()`` after every step, so the buffer
only ever holds the current step's rollout and ``minibatches`` splits it for the
PPO epochs. Off-policy recipes keep up to ``capacity`` rows across steps and use
``staleness`` to weight or drop old rows.

The buffer stores rows, not groups: eviction and minibatches break the prompt-major
G-sample structure (``Rollout.select`` sets ``group_size`` to 1), so compute
group-relative advantages *before* ``add``.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Iterator

import torch
from torch import Tensor

from tokrl.types import Rollout, concat_rollouts


class ExperienceBuffer:
    """At most ``capacity`` sequences, oldest rows evicted first.

    Rows live in one concatenated ``Rollout`` (N rows, P / T = the widest part stored
    so far) beside ``steps``, (N,) long: the step at which each row was collected.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._data: Rollout | None = None
        self._steps = torch.zeros(0, dtype=torch.long)  # (N,)

    def __len__(self) -> int:
        return 0 if self._data is None else self._data.num_sequences

    def add(self, rollout: Rollout, step: int) -> None:
        """Store the N rows of ``rollout``, collected at ``step``; evict the oldest if full."""
        n = rollout.num_sequences
        if n > self.capacity:
            # evicting rows of the batch being added would silently drop fresh data
            raise ValueError(f"a rollout of {n} sequences does not fit a buffer of capacity "
                             f"{self.capacity}")
        rollout = _detached(rollout)
        if self._data is None:
            self._data = rollout
        else:
            _check_compatible(self._data, rollout)
            self._data = concat_rollouts([self._data, rollout])
        self._steps = torch.cat([self._steps, torch.full((n,), step, dtype=torch.long)])
        excess = len(self) - self.capacity
        if excess > 0:  # rows are stored oldest first, so the oldest are the first rows
            keep = torch.arange(excess, len(self))
            self._data, self._steps = self._data.select(keep), self._steps[excess:]

    def minibatches(self, size: int, generator: torch.Generator) -> Iterator[Rollout]:
        """Every stored row exactly once, shuffled, in Rollouts of ``size`` rows.

        The last minibatch may be smaller. The permutation is drawn from ``generator``
        when this method is called (not at the first ``next``), so the order depends
        only on the generator's state and later ``add`` calls do not change it.
        Minibatches keep the buffer's padded widths P and T (a loss normalised by T
        must not change with the split).
        """
        if size < 1:
            raise ValueError(f"minibatch size must be >= 1, got {size}")
        data = self._data
        if data is None:
            return iter(())
        # randperm draws on the generator's device; the indices are moved to the data's
        order = torch.randperm(len(self), generator=generator, device=generator.device)
        order = order.to(data.tokens.device)
        return (data.select(order[i:i + size]) for i in range(0, len(order), size))

    def stored(self) -> Rollout | None:
        """Every stored row, oldest first, as one Rollout (None when empty)."""
        return self._data

    def staleness(self, step: int) -> Tensor:
        """(N,) long: how many steps ago each stored row was collected (0 = this step)."""
        return step - self._steps

    def clear(self) -> None:
        """Drop every row (on-policy training calls this after each step)."""
        self._data = None
        self._steps = torch.zeros(0, dtype=torch.long)

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists, dicts, ints and strings: loadable with weights_only=True.

        Task examples are stored as they are, so their columns must be such plain
        values too (no numpy arrays) for ``torch.load(weights_only=True)`` to read them.
        """
        rollout = None
        if self._data is not None:
            rollout = {f.name: getattr(self._data, f.name) for f in fields(Rollout)}
        return {"capacity": self.capacity, "steps": self._steps, "rollout": rollout}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self._steps = state["steps"]
        self._data = None if state["rollout"] is None else Rollout(**state["rollout"])


def _detached(rollout: Rollout) -> Rollout:
    """The same rows with every tensor detached, so the buffer never keeps a graph alive."""
    return replace(rollout, **{f.name: getattr(rollout, f.name).detach() for f in fields(rollout)
                               if isinstance(getattr(rollout, f.name), Tensor)})


def _check_compatible(stored: Rollout, new: Rollout) -> None:
    """Refuse parts that ``concat_rollouts`` would join silently into a wrong Rollout.

    trap: concat_rollouts takes a None field (or an empty list) from the first part,
    so a field present in only one part would be dropped or keep the wrong row count.
    """
    for f in fields(Rollout):
        a, b = getattr(stored, f.name), getattr(new, f.name)
        if isinstance(a, list) or isinstance(b, list):
            if bool(a) != bool(b):
                raise ValueError(f"Rollout.{f.name} is empty in one part and not in the other")
        elif (a is None) != (b is None):
            raise ValueError(f"Rollout.{f.name} is None in one part and a tensor in the other")
