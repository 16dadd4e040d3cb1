"""Save and resume: everything a run needs to continue bit for bit.

A checkpoint is a folder ``run_dir/checkpoints/step-00000012/`` holding

- ``weights.safetensors``: the trainable policy weights (the adapters alone under LoRA)
- ``value_head.safetensors``: the value head, when the recipe has one
- ``optimizer.pt``: AdamW's state (tensors and numbers only; keyed by parameter
  name when the model is sharded with FSDP)
- ``state.pt``: step, RNG states (python, numpy, torch, the shuffle generator; one
  set per process of a torchrun run), the prompt sampler's position, the baselines
  the KL coefficient and the health warnings' trackers
- ``config.yaml``: the run's configuration
- ``manifest.json``: the step and a sha256 of every file above, written last

It is written into a temporary folder, each file fsynced, and renamed into place:
a folder named ``step-*`` is complete, and a checksum mismatch means corruption.
Loading reads weights with safetensors and everything else with
``torch.load(weights_only=True)``: no pickle of arbitrary objects anywhere.

Under torchrun every process takes part (FSDP gathers whole tensors to rank 0) and
rank 0 alone writes; on resume every process reads the folder, so across machines
the run directory must be on a filesystem they share.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tokrl.training import distributed

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which and what to do."""


def fault_point(name: str, step: int) -> None:
    """Kill this process with SIGKILL at a named point when ``TOKRL_KILL_AT=name:step``.

    Crash tests use it to stop a run at an exact place (during rollout, during the
    update, halfway through a checkpoint write); it does nothing otherwise.
    """
    if os.environ.get("TOKRL_KILL_AT") == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (tied weights appear once), as CPU tensors."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "gauss": gauss}}


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def save_checkpoint(run_dir: Path, state, config_yaml: str, keep: int) -> Path:
    """Write the checkpoint of ``state`` (a TrainState) atomically; keep the newest ``keep``.

    Every process of a torchrun run calls this; rank 0 writes, the others wait for it.
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{state.step:08d}"
    sharded = distributed.is_sharded(state.learner.model)
    # collectives first, on every process: whole tensors (FSDP) and each process's RNGs
    if sharded:
        weights = distributed.full_state_dict(state.learner.model)
        optimizer = distributed.full_optimizer_state(state.learner.model, state.learner.value_head,
                                                     state.learner.optimizer)
    else:
        weights, optimizer = trainable_weights(state.learner.model), state.learner.optimizer.state_dict()
    rngs = distributed.all_gather(rng_state())
    if distributed.is_main():
        _write(root, final, state, weights, optimizer, rngs, sharded, config_yaml, keep)
    distributed.barrier()
    return final


def _write(root: Path, final: Path, state, weights: dict, optimizer: dict, rngs: list, sharded: bool,
           config_yaml: str, keep: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, tmp / "weights.safetensors")
    if state.learner.value_head is not None:
        save_file(trainable_weights(state.learner.value_head), tmp / "value_head.safetensors")
    torch.save(optimizer, tmp / "optimizer.pt")
    fault_point("checkpoint", state.step)              # a crash here leaves only the .tmp folder
    torch.save({
        "step": state.step,
        "rng": rngs[0],
        "rng_ranks": rngs,
        "shuffle_generator": state.shuffle_generator.get_state(),
        "sampler": state.sampler.state_dict(),
        "baseline": state.baseline.state_dict(),
        "reward_avg": state.reward_avg.state_dict(),
        "kl_coef": state.kl_coef.state_dict(),
        "bad_steps": state.bad_steps,
        "health": state.health.state_dict(),
        "optimizer_keys": "names" if sharded else "indices",
    }, tmp / "state.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    files = sorted(p.name for p in tmp.iterdir())
    for name in files:
        _fsync(tmp / name)
    manifest = {"step": state.step, "files": {name: _sha256(tmp / name) for name in files}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync(tmp / MANIFEST)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    for old in complete_checkpoints(root.parent)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)


def newest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of ``run_dir``; a ValueError when there is none."""
    checkpoints = complete_checkpoints(run_dir)
    if not checkpoints:
        raise ValueError(f"{run_dir} has no complete checkpoint to resume from; start it again without --resume")
    return checkpoints[-1]


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders that finished writing, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / MANIFEST).is_file())


def verify(checkpoint: Path) -> dict[str, Any]:
    """The manifest of ``checkpoint`` after checking every file's checksum."""
    try:
        manifest = json.loads((checkpoint / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError):
        raise CheckpointError(f"checkpoint {checkpoint} has an unreadable manifest; delete it to resume "
                              "from an earlier one") from None
    for name, digest in files.items():
        path = checkpoint / name
        if not path.is_file() or _sha256(path) != digest:
            raise CheckpointError(f"checkpoint {checkpoint} is corrupt ({name} does not match its checksum); "
                                  "delete it to resume from an earlier one")
    return manifest


def load_checkpoint(checkpoint: Path, state) -> None:
    """Restore ``state`` (a freshly built TrainState of the same config) from ``checkpoint``.

    Under torchrun every process calls this: rank 0 checks the checksums, each process
    reads the small files, and a sharded model's whole tensors are read by rank 0 and
    scattered to the shards. A run may resume with another number of processes.
    """
    distributed.run_on_main(lambda: verify(checkpoint))
    saved = torch.load(checkpoint / "state.pt", weights_only=True)
    learner = state.learner
    sharded = distributed.is_sharded(learner.model)
    if saved.get("optimizer_keys", "indices") != ("names" if sharded else "indices"):
        raise CheckpointError(f"checkpoint {checkpoint} was written with{'out' if sharded else ''} "
                              f"dist.strategy=fsdp; resume it the same way")
    if sharded:
        weights = load_file(checkpoint / "weights.safetensors") if distributed.is_main() else {}
        distributed.run_on_main(lambda: _check_names(learner.model, weights, checkpoint))
        distributed.load_full_state_dict(learner.model, weights)
    else:
        _load_weights(learner.model, load_file(checkpoint / "weights.safetensors"), checkpoint)
    if learner.value_head is not None:
        _load_weights(learner.value_head, load_file(checkpoint / "value_head.safetensors"), checkpoint)
    if sharded:
        optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True) if distributed.is_main() else {}
        distributed.load_full_optimizer_state(learner.model, learner.value_head, learner.optimizer, optimizer)
    else:
        learner.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    state.step = saved["step"]
    rngs = saved.get("rng_ranks", [saved["rng"]])
    # each process its own RNGs; resumed with another number of processes, rank 0's
    set_rng_state(rngs[distributed.rank()] if len(rngs) == distributed.world_size() else saved["rng"])
    state.shuffle_generator.set_state(saved["shuffle_generator"])
    state.sampler.load_state_dict(saved["sampler"])
    state.baseline.load_state_dict(saved["baseline"])
    state.reward_avg.load_state_dict(saved["reward_avg"])
    state.kl_coef.load_state_dict(saved["kl_coef"])
    state.bad_steps = saved["bad_steps"]
    if "health" in saved:                          # checkpoints written before the health warnings lack it
        state.health.load_state_dict(saved["health"])


def _check_names(module: torch.nn.Module, weights: dict[str, torch.Tensor], checkpoint: Path) -> None:
    params = dict(module.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise CheckpointError(f"checkpoint {checkpoint} does not fit this model "
                              f"({len(missing)} weights missing, {len(unknown)} unknown); was the model changed?")


def _load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], checkpoint: Path) -> None:
    _check_names(module, weights, checkpoint)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
