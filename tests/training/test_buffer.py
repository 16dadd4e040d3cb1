"""ExperienceBuffer: eviction, minibatches (the same rows for 1 and W processes), clear, checkpoint round trip."""

import pytest
import torch

from tokrl.training.buffer import ExperienceBuffer
from tokrl.types import Rollout


@pytest.fixture
def numbered(make_rollout):
    """``numbered(first_id, n, T=3, P=2, values=False)``: n rows whose row i is identifiable:
    tokens[i, 0] == first_id + i."""
    def numbered(first_id: int, n: int, T: int = 3, P: int = 2, values: bool = False) -> Rollout:
        ids = torch.arange(first_id, first_id + n)
        tokens = ids[:, None].repeat(1, T)                                  # (n, T)
        return make_rollout(
            ids[:, None].float().repeat(1, T), tokens=tokens, prompt_ids=torch.ones(n, P, dtype=torch.long),
            logprobs=-ids[:, None].float().repeat(1, T), group_size=n, values=torch.zeros(n, T) if values else None,
            texts=[f"row{i}" for i in ids.tolist()],
            examples=[{"prompt": f"p{i}", "target_ids": [i, i + 1]} for i in ids.tolist()],
        )
    return numbered


def row_ids(rollout: Rollout) -> list[int]:
    return rollout.tokens[:, 0].tolist()


def test_add_and_len(numbered):
    buf = ExperienceBuffer(capacity=10)
    assert len(buf) == 0
    buf.add(numbered(0, 4))
    buf.add(numbered(100, 3, T=5))  # a wider part: T is padded to 5
    assert len(buf) == 7
    (everything,) = buf.minibatches(7, torch.Generator().manual_seed(0))
    assert everything.tokens.shape == (7, 5)
    assert sorted(row_ids(everything)) == [0, 1, 2, 3, 100, 101, 102]


def test_capacity_evicts_oldest_rows_first(numbered):
    buf = ExperienceBuffer(capacity=5)
    buf.add(numbered(0, 3))
    buf.add(numbered(10, 3))         # 6 rows: row 0 goes
    assert len(buf) == 5
    buf.add(numbered(20, 2))         # 7 rows: rows 1, 2 go
    (everything,) = buf.minibatches(100, torch.Generator().manual_seed(0))
    assert sorted(row_ids(everything)) == [10, 11, 12, 20, 21]
    assert sorted(everything.texts) == ["row10", "row11", "row12", "row20", "row21"]
    assert row_ids(buf.stored()) == [10, 11, 12, 20, 21]           # oldest first


def test_rollout_larger_than_capacity_raises(numbered):
    with pytest.raises(ValueError, match="capacity"):
        ExperienceBuffer(capacity=2).add(numbered(0, 3))


def test_minibatches_cover_every_row_once_and_are_shuffled_deterministically(numbered):
    buf = ExperienceBuffer(capacity=100)
    buf.add(numbered(0, 10))
    buf.add(numbered(10, 7))
    batches = list(buf.minibatches(5, torch.Generator().manual_seed(123)))
    assert [b.num_sequences for b in batches] == [5, 4, 4, 4]     # ceil(17 / 5) = 4, sizes differ by at most 1
    seen = [i for b in batches for i in row_ids(b)]
    assert sorted(seen) == list(range(17))                         # every row exactly once
    assert seen != list(range(17))                                 # shuffled
    for b in batches:                                              # rows stay aligned across fields
        assert b.rewards[:, 0].long().tolist() == row_ids(b)
        assert b.texts == [f"row{i}" for i in row_ids(b)]
        assert b.group_size == 1
    again = [i for b in buf.minibatches(5, torch.Generator().manual_seed(123)) for i in row_ids(b)]
    assert again == seen                                           # same seed, same order
    other = [i for b in buf.minibatches(5, torch.Generator().manual_seed(7)) for i in row_ids(b)]
    assert other != seen


def test_minibatch_order_is_fixed_when_called(numbered):
    buf = ExperienceBuffer(capacity=100)
    buf.add(numbered(0, 6))
    batches = buf.minibatches(4, torch.Generator().manual_seed(0))
    buf.add(numbered(50, 6))  # added after the call: not part of this pass
    assert sorted(i for b in batches for i in row_ids(b)) == list(range(6))


def test_minibatches_of_empty_buffer_and_bad_size(numbered):
    buf = ExperienceBuffer(capacity=4)
    assert list(buf.minibatches(2, torch.Generator())) == []
    with pytest.raises(ValueError):
        buf.minibatches(-1, torch.Generator())
    buf.add(numbered(0, 3))
    (everything,) = buf.minibatches(0, torch.Generator())          # size 0: one minibatch of every row
    assert sorted(row_ids(everything)) == [0, 1, 2]


def test_two_processes_share_the_one_process_minibatches(numbered):
    # one process holds rows 0..11; two processes hold 0..5 and 6..11 of the same batch
    whole = ExperienceBuffer(capacity=12)
    whole.add(numbered(0, 12))
    halves = [ExperienceBuffer(capacity=6) for _ in range(2)]
    halves[0].add(numbered(0, 6))
    halves[1].add(numbered(6, 6))
    one = [row_ids(b) for b in whole.minibatches(4, torch.Generator().manual_seed(5))]
    two = [[row_ids(b) for b in h.minibatches(4, torch.Generator().manual_seed(5), world=2, rank=r)]
           for r, h in enumerate(halves)]
    for k, rows in enumerate(one):                                 # minibatch k is the same rows, split
        assert sorted(rows) == sorted(two[0][k] + two[1][k])
        assert len(two[0][k]) == len(two[1][k])


def test_clear(numbered):
    buf = ExperienceBuffer(capacity=8)
    buf.add(numbered(0, 4))
    buf.clear()
    assert len(buf) == 0 and buf.stored() is None
    buf.add(numbered(0, 3))          # on-policy use: clear, then add the next step
    assert len(buf) == 3


def test_add_detaches(numbered):
    r = numbered(0, 2)
    r.logprobs = r.logprobs.clone().requires_grad_()
    buf = ExperienceBuffer(capacity=4)
    buf.add(r)
    (b,) = buf.minibatches(2, torch.Generator())
    assert not b.logprobs.requires_grad


def test_mismatched_optional_fields_are_refused(numbered):
    buf = ExperienceBuffer(capacity=8)
    buf.add(numbered(0, 2, values=True))
    with pytest.raises(ValueError, match="values"):
        buf.add(numbered(2, 2, values=False))


def test_state_dict_round_trip(tmp_path, numbered):
    buf = ExperienceBuffer(capacity=5)
    buf.add(numbered(0, 3, values=True))
    buf.add(numbered(10, 3, T=4, values=True))        # evicts row 0
    path = tmp_path / "buffer.pt"
    torch.save(buf.state_dict(), path)
    restored = ExperienceBuffer(capacity=1)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.capacity == 5 and len(restored) == 5
    a = list(buf.minibatches(2, torch.Generator().manual_seed(1)))
    b = list(restored.minibatches(2, torch.Generator().manual_seed(1)))
    for x, y in zip(a, b, strict=True):
        for name in ("prompt_ids", "prompt_mask", "tokens", "lengths", "mask", "logprobs",
                     "entropy", "rewards", "values"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name
        assert x.ref_logprobs is None and y.ref_logprobs is None
        assert x.texts == y.texts and x.examples == y.examples


def test_empty_state_dict_round_trip(tmp_path):
    path = tmp_path / "empty.pt"
    torch.save(ExperienceBuffer(capacity=3).state_dict(), path)
    restored = ExperienceBuffer(capacity=9)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert len(restored) == 0 and restored.capacity == 3
