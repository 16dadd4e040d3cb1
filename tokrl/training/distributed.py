"""Data-parallel and sharded training over processes, launched by torchrun.

    torchrun --nproc_per_node=W -m tokrl train CONFIG

One process never touches torch.distributed: without a process group every helper
here is the identity or does nothing. With W processes (ranks 0 ... W-1):

- each rank rolls out B/W of the step's B prompts, prompt-major, so a prompt's G
  samples stay on one rank; sampling noise is keyed to (seed, step, prompt, sample),
  not to the rank (``generation.sampling.sample_seeds``);
- the scored rows are gathered (``gather_rollout``: N x T numbers, small beside the
  model), so every rank computes rewards' KL, advantages, baselines, whitening and
  metrics over the whole batch exactly as one process would, then keeps its own rows;
- minibatches are the same rows whatever W is (``buffer.minibatch_rows``), the
  update's token and sequence counts are all-reduced (the whole batch's
  denominators) and gradients are summed over ranks, by DDP (replicated weights) or
  FSDP2 (``fully_shard``: weights, gradients and AdamW state split W ways);
- every rank evaluates the same held-out prompts (under FSDP each forward pass
  needs them all); rank 0 alone writes logs, checkpoints, the report and the model.

Backend: gloo on CPU; where CUDA exists, "cpu:gloo,cuda:nccl" (NCCL carries CUDA
tensors, gloo CPU ones), so one code path serves both. tokrl keeps its tensors on
the CPU today, so for now all traffic goes through gloo.
"""

from __future__ import annotations

import os
import pickle
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from tokrl.config import Config
from tokrl.errors import ConfigError
from tokrl.training.buffer import num_minibatches
from tokrl.types import Rollout, concat_rollouts


# ------------------------------------------------------------------ who am I

def world_size() -> int:
    """W, the number of processes; 1 without a process group."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in 0 ... W-1 (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes the run directory (rank 0)."""
    return rank() == 0


def init(cfg: Config) -> None:
    """Join torchrun's process group, after checking that ``cfg`` splits over it.

    torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. With one
    process (WORLD_SIZE unset or 1), or when a group exists already, nothing is joined.
    """
    world = world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    check(cfg, world)
    if world == 1 or dist.is_initialized():
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and local < torch.cuda.device_count():
        torch.cuda.set_device(local)              # this process's GPU, for NCCL
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    _JOINED.append(True)


_JOINED: list[bool] = []
"""non-empty once ``init`` has joined a group (vLLM may make a one-process group of its own)"""


def shutdown() -> None:
    """Leave the group ``init`` joined (a group vLLM made is vLLM's to destroy)."""
    if _JOINED and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        _JOINED.clear()


def check(cfg: Config, world: int) -> None:
    """Raise ConfigError when the step's batch cannot split evenly over ``world`` processes."""
    t = cfg.train
    if world == 1:
        return
    if t.compile:
        raise ConfigError(f"train.compile runs in one process only (this run has {world}); set it to false")
    if t.prompts_per_step % world:
        raise ConfigError(f"train.prompts_per_step={t.prompts_per_step} does not split over {world} processes "
                          f"(each rolls out prompts_per_step / {world} prompts with all their samples); "
                          f"use a multiple of {world}")
    n = t.prompts_per_step * t.group_size
    k = num_minibatches(n, t.minibatch_size)
    if (n // world) % k:
        raise ConfigError(f"train.minibatch_size={t.minibatch_size}: the {n} sequences of a step make {k} minibatches, "
                          f"which do not split evenly over {world} processes of {n // world} sequences; "
                          f"use a multiple of {world} that divides {n}")


# ------------------------------------------------------------- collectives

def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(x: Tensor) -> Tensor:
    """The sum of ``x`` over processes (a new tensor; ``x`` itself with one process)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every process."""
    return bool(all_reduce_sum(torch.tensor([0.0 if flag else 1.0]))[0] == 0)


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each key's sum over processes (every process passes the same keys)."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    total = all_reduce_sum(torch.tensor([values[k] for k in keys], dtype=torch.float64))
    return dict(zip(keys, total.tolist()))


def all_gather(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order."""
    if world_size() == 1:
        return [obj]
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, obj)
    return parts


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each key's mean over the processes that report it (means of equal shards: the batch's mean)."""
    if world_size() == 1:
        return values
    parts = all_gather(values)
    keys = sorted({k for p in parts for k in p})
    return {k: sum(p[k] for p in parts if k in p) / sum(k in p for p in parts) for k in keys}


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 alone; its result, or the exception it raised, on every process.

    For what must happen once (check or create the run directory, take its lock, read
    a checkpoint's checksums): the other ranks wait here, and a failure stops them all
    with rank 0's error instead of leaving them waiting in a collective.
    """
    if world_size() == 1:
        return fn()
    result, error, sent = None, None, None
    if is_main():
        try:
            result = fn()
        except Exception as e:
            error = sent = e
            try:
                pickle.dumps(e)
            except Exception:               # the others still learn what went wrong
                sent = RuntimeError(f"{type(e).__name__}: {e}")
    result, relayed = broadcast((result, sent))
    if error is not None:
        raise error
    if relayed is not None:
        relayed.relayed_from_main = True          # rank 0 prints it; see should_report
        raise relayed
    return result


def should_report(error: BaseException) -> bool:
    """Whether this process prints ``error``: rank 0 always; another rank only an error of
    its own, raised while the processes work together (not rank 0's relayed error, nor
    bad input that every process found before joining)."""
    joined = dist.is_available() and dist.is_initialized()
    if (rank() if joined else int(os.environ.get("RANK", "0"))) == 0:
        return True
    return joined and not getattr(error, "relayed_from_main", False)


# ------------------------------------------------------------ the batch split

def shard(examples: list) -> tuple[int, list]:
    """(index of this rank's first prompt, this rank's B/W consecutive prompts)."""
    n = len(examples) // world_size()
    first = rank() * n
    return first, examples[first:first + n]


def gather_rollout(batch: Rollout) -> Rollout:
    """The whole step's batch on every process: each rank's rows, in rank order.

    Ranks pad prompts to the same width P (``generation.prompts.longest_prompt``); completions are
    right-padded to the longest T. With one process: ``batch`` itself.
    """
    if world_size() == 1:
        return batch
    return concat_rollouts(all_gather(batch))


def own_rows(batch: Rollout) -> Rollout:
    """This rank's rows of the whole batch (``batch`` itself with one process)."""
    if world_size() == 1:
        return batch
    n = batch.num_sequences // world_size()
    return batch.select(torch.arange(rank() * n, (rank() + 1) * n))


# ------------------------------------------------------------ model wrapping

def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` is split over the processes by FSDP (so every forward pass is a collective)."""
    if world_size() == 1:
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def all_done(done: Tensor, model: nn.Module) -> bool:
    """Whether generation may stop: every row done here, and, for a sharded model (whose
    forward passes every process must run together), on every process."""
    if not is_sharded(model):
        return bool(done.all())
    return all_true(bool(done.all()))


def parallelize(model: nn.Module, head: nn.Module | None, reference: nn.Module | None,
                strategy: str) -> tuple[nn.Module | None, nn.Module | None]:
    """Prepare the modules for W processes before the optimizer sees their parameters.

    ddp: returns DDP wrappers of the policy and the value head (the update calls those;
    rollout and evaluation call the modules themselves). fsdp: shards the policy and the
    reference (unless it is the policy with adapters off) in place, each decoder layer
    its own unit; the value head (H + 1 numbers) stays replicated under DDP.
    returns (policy, head) as the update calls them; None means the module itself.
    """
    if world_size() == 1:
        return None, None
    from torch.nn.parallel import DistributedDataParallel as DDP

    # buffers (rotary frequencies) are equal everywhere: no broadcast before each forward
    wrapped_head = DDP(head, forward_sync_buffers=False) if head is not None else None
    if strategy == "fsdp":
        _fully_shard(model)
        if reference is not None and reference is not model:
            _fully_shard(reference)
        return None, wrapped_head
    return DDP(model, forward_sync_buffers=False), wrapped_head


def _fully_shard(model: nn.Module) -> None:
    import warnings

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # the logits are a view; tokrl never changes them in place, which is what this warns of
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")

    device = next(model.parameters()).device.type
    mesh = init_device_mesh(device, (world_size(),))
    layers = set(getattr(model, "_no_split_modules", None) or ())       # e.g. LlamaDecoderLayer
    for module in model.modules():
        if type(module).__name__ in layers:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


@contextmanager
def accumulating(modules: list[nn.Module | None], sync: bool) -> Iterator[None]:
    """Forward and backward of one microbatch: DDP all-reduces gradients only when
    ``sync`` (the last microbatch); before that they accumulate locally. FSDP reduces
    each microbatch's gradients into its shards as it goes."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    with ExitStack() as stack:
        if not sync:
            for m in modules:
                if isinstance(m, DDP):
                    stack.enter_context(m.no_sync())
        yield


def clip_grad_norm_(params: list[Tensor], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_``, also when FSDP's sharded gradients (DTensors)
    sit beside replicated ones (the value head's). returns the total norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if world_size() == 1:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    from torch.distributed.tensor import DTensor

    if not any(isinstance(g, DTensor) for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    sharded = sum((g.to_local().double().square().sum() for g in grads if isinstance(g, DTensor)),
                  torch.zeros((), dtype=torch.float64))
    replicated = sum((g.double().square().sum() for g in grads if not isinstance(g, DTensor)),
                     torch.zeros((), dtype=torch.float64))
    total = (all_reduce_sum(sharded) + replicated).sqrt().float()        # each shard counted once
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(float(coef))
    return total


# ---------------------------------------------------- whole tensors of sharded modules

def full_state_dict(model: nn.Module, trainable_only: bool = True) -> dict[str, Tensor]:
    """The weights of a sharded ``model`` as whole CPU tensors on rank 0 ({} elsewhere);
    every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not trainable_only:
        return full
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t for n, t in full.items() if n in names}


def load_full_state_dict(model: nn.Module, weights: dict[str, Tensor]) -> None:
    """Load whole tensors, read by rank 0 (the others pass {}), into a sharded ``model``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                  strict=False))


def _named(model: nn.Module, head: nn.Module | None) -> nn.Module:
    # one module whose parameter names cover every parameter the optimizer holds
    return nn.ModuleDict({"policy": model, **({"value_head": head} if head is not None else {})})


def full_optimizer_state(model: nn.Module, head: nn.Module | None, optimizer) -> dict[str, Any]:
    """AdamW's state keyed by parameter name, with whole tensors, on rank 0 ({} elsewhere)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(_named(model, head), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, head: nn.Module | None, optimizer, state: dict[str, Any]) -> None:
    """Load ``full_optimizer_state``'s output (read by rank 0; the others pass {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(_named(model, head), optimizer, state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
