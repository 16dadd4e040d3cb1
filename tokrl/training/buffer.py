"""ExperienceBuffer: the rollouts the update learns from, dealt into minibatches.

On-policy recipes (PG, PPO, GRPO) call ``clear()`` after every step, so the buffer
only ever holds the current step's rows (this process's share of them) and
``minibatches`` deals them into the epochs' minibatches. A buffer kept across
steps holds up to ``capacity`` rows, the oldest evicted first.

The buffer stores rows, not groups: eviction and minibatches break the prompt-major
G-sample structure (``Rollout.select`` sets ``group_size`` to 1), so compute
group-relative advantages *before* ``add``.

Under data parallelism each of W processes holds rows ``rank*n ... rank*n+n-1`` of
the step's whole batch. The minibatches are dealt over the whole batch's rows in a
way that does not depend on W (``minibatch_rows``), and each process takes its
share of each: one process and W processes train on the same minibatches.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Iterator

import torch
from torch import Tensor

from tokrl.types import Rollout, concat_rollouts


def num_minibatches(num_rows: int, size: int) -> int:
    """K = ceil(N / size) minibatches per epoch (one when size is 0)."""
    return max(1, -(-num_rows // size)) if size else 1


def minibatch_rows(num_rows: int, size: int, generator: torch.Generator) -> list[Tensor]:
    """One epoch's minibatches: the N rows dealt into K = ceil(N / size) random minibatches.

    The rows are cut into blocks of K consecutive rows and each block deals one row to
    each minibatch, in a random order per block. Every minibatch is then a random sample
    spread evenly over the batch, and a shard of whole blocks (what each of W processes
    holds) gives every minibatch the same number of rows whatever W is: the minibatches
    are the same rows for one process and for W.
    returns K (n_k,) long tensors of row indices, ascending; sizes differ by at most one.
    """
    k = num_minibatches(num_rows, size)
    blocks = -(-num_rows // k)
    deal = torch.rand(blocks, k, generator=generator, device=generator.device).argsort(dim=1).cpu()  # (blocks, K)
    rows = torch.arange(blocks)[:, None] * k + deal                                                   # (blocks, K)
    return [r[r < num_rows] for r in rows.T]                            # a last, partial block deals fewer


class ExperienceBuffer:
    """At most ``capacity`` sequences, oldest rows evicted first.

    Rows live in one concatenated ``Rollout`` (N rows, P / T = the widest part stored
    so far).
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._data: Rollout | None = None

    def __len__(self) -> int:
        return 0 if self._data is None else self._data.num_sequences

    def add(self, rollout: Rollout) -> None:
        """Store the N rows of ``rollout``; evict the oldest if full."""
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
        excess = len(self) - self.capacity
        if excess > 0:  # rows are stored oldest first, so the oldest are the first rows
            self._data = self._data.select(torch.arange(excess, len(self)))

    def minibatches(self, size: int, generator: torch.Generator, world: int = 1, rank: int = 0
                    ) -> Iterator[Rollout]:
        """One epoch: this process's share of each of the K = ceil(W*N / size) minibatches.

        The buffer holds rows ``rank*N ... rank*N+N-1`` of a batch of W*N rows spread over
        W processes (W = 1: all of it). ``size`` 0 means one minibatch of everything. The
        deal is drawn from ``generator`` when this is called, so the order depends only on
        the generator's state. Minibatches keep the buffer's padded widths P and T (a
        loss normalised by T must not change with the split).
        """
        if size < 0:
            raise ValueError(f"minibatch size must be >= 0, got {size}")
        data = self._data
        if data is None:
            return iter(())
        n = data.num_sequences
        first = rank * n
        deals = minibatch_rows(n * world, size, generator)
        return (data.select(rows[(rows >= first) & (rows < first + n)] - first) for rows in deals)

    def stored(self) -> Rollout | None:
        """Every stored row, oldest first, as one Rollout (None when empty)."""
        return self._data

    def clear(self) -> None:
        """Drop every row (on-policy training calls this after each step)."""
        self._data = None

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists, dicts, ints and strings: loadable with weights_only=True.

        Task examples are stored as they are, so their columns must be such plain
        values too (no numpy arrays) for ``torch.load(weights_only=True)`` to read them.
        """
        rollout = None
        if self._data is not None:
            rollout = {f.name: getattr(self._data, f.name) for f in fields(Rollout)}
        return {"capacity": self.capacity, "rollout": rollout}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
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
