"""Which groups carry signal, and dynamic sampling (DAPO, Yu et al. 2025).

A group whose G task scores are all equal gets a zero group-relative advantage: it
costs a rollout, a forward and a backward pass and teaches nothing. Its share of a
step is logged as ``groups/zero_signal_frac`` (``training.collect.signal_metrics``).

With ``train.dynamic_sampling`` a step rolls out its B prompts and, while fewer than
B of the groups drawn so far carry signal, draws B more prompts from the prompt
sampler (a refill round), at most ``train.max_resample`` times. Then, on the whole
gathered batch (every process holds every row), it keeps the first B informative
groups in prompt order; later ones are dropped. When the refills run out with K < B
informative groups, the batch is filled up to B groups with the first uninformative
ones, whose mask is set to 0 after the advantages: they take no part in the loss (as
``collect.mask_outlier_sequences`` leaves rows out), so the step trains on the K
informative groups, and the batch keeps its B*G rows, so it still splits evenly over
W processes and into the same minibatches.

Seeds: round r's prompt i is prompt r*B + i of the step, so its noise is keyed to
(seed, step, r*B + i, sample). Rounds, choices and prompts drawn do not depend on
the number of processes, and a resumed run draws what an uninterrupted one draws (the
sampler's position is checkpointed after the step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from tokrl.tasks.base import Example
from tokrl.training import distributed
from tokrl.types import Rollout, concat_rollouts

SIGNAL_ATOL = 1e-6
"""scores closer than this count as equal (and advantages below it as zero)"""


def informative_groups(scores: Tensor, group_size: int, atol: float = SIGNAL_ATOL) -> Tensor:
    """(B,) bool: whether each group's scores differ (max - min > atol).

    scores: (N,) task scores, prompt-major, N = B*G.
    """
    s = scores.view(-1, group_size)                                   # (B, G)
    return (s.max(dim=1).values - s.min(dim=1).values) > atol


def choose_groups(signal: Tensor, wanted: int) -> tuple[Tensor, Tensor]:
    """The groups a step trains on: the first ``wanted`` informative ones in prompt order;
    when fewer exist, the first uninformative ones fill the rest (to be left out of the loss).

    signal: (M,) bool over every group drawn, in prompt order; wanted: B <= M.
    returns (kept (B,) long group indices, ascending; trained (B,) bool: False on fillers).
    """
    informative = signal.nonzero().flatten()[:wanted]                  # (K,)
    fillers = (~signal).nonzero().flatten()[: wanted - len(informative)]
    kept, order = torch.cat([informative, fillers]).sort()
    trained = torch.cat([torch.ones(len(informative), dtype=torch.bool),
                         torch.zeros(len(fillers), dtype=torch.bool)])[order]
    return kept, trained


def group_rows(groups: Tensor, group_size: int) -> Tensor:
    """(K*G,) long: the rows of groups ``groups`` ((K,) long), prompt-major."""
    return (groups[:, None] * group_size + torch.arange(group_size)[None, :]).flatten()


@dataclass
class Drawn:
    """What dynamic sampling drew in one step, for the metrics and the loss mask."""

    scores: Tensor
    """(M*G,) task scores of every sample drawn, over all rounds"""
    rounds: int
    """rollout rounds drawn: 1 + the refills"""
    trained: Tensor
    """(N,) float: 1.0 on the rows of the chosen batch that take part in the loss, 0.0 on fillers"""
    examples: list[Example]
    """the B prompts of the chosen batch, in its order"""


def draw_rounds(first: Rollout, roll: Callable[[list[Example], int], Rollout],
                refill: Callable[[], list[Example]], wanted: int, max_resample: int) -> tuple[Rollout, int]:
    """Every process's rows of every round (round 0 is ``first``, this process's share),
    drawing refills while fewer than ``wanted`` informative groups were found.

    roll(examples, offset): this process's scored rows of a round whose prompts are
    numbered from ``offset`` in the step. returns (the gathered rows of all rounds, rounds).
    """
    G = first.group_size
    parts = [distributed.gather_rollout(first)]
    found = int(informative_groups(parts[0].scores, G).sum())
    while found < wanted and len(parts) <= max_resample:
        part = distributed.gather_rollout(roll(refill(), len(parts) * wanted))
        found += int(informative_groups(part.scores, G).sum())
        parts.append(part)
    return concat_rollouts(parts), len(parts)


def dynamic_batch(first: Rollout, roll: Callable[[list[Example], int], Rollout],
                  refill: Callable[[], list[Example]], wanted: int, max_resample: int) -> tuple[Rollout, Drawn]:
    """This process's share of the step's chosen batch of ``wanted`` groups, and what was drawn.

    first: this process's rows of the step's first B = ``wanted`` prompts.
    """
    drawn, rounds = draw_rounds(first, roll, refill, wanted, max_resample)
    G = first.group_size
    kept, trained = choose_groups(informative_groups(drawn.scores, G), wanted)
    chosen = drawn.select(group_rows(kept, G))
    chosen.group_size = G                                 # select() forgets groups; these are whole ones
    record = Drawn(scores=drawn.scores, rounds=rounds, trained=trained.repeat_interleave(G).float(),
                   examples=chosen.examples[::G])
    mine = distributed.own_rows(chosen)
    mine.group_size = G                                   # B/W whole groups on each process
    return mine, record
