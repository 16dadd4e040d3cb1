"""Save and resume: everything a run needs to continue bit for bit.

A checkpoint is a folder ``run_dir/checkpoints/step-00000012/`` holding

- ``weights.safetensors``: the trainable policy weights (the adapters alone under LoRA)
- ``value_head.safetensors``: the value head, when the recipe has one
- ``optimizer.pt``: AdamW's state (tensors and numbers only)
- ``state.pt``: step, RNG states (python, numpy, torch, the rollout and shuffle
  generators), the prompt sampler's position, the baselines and the KL coefficient
- ``config.yaml``: the run's configuration
- ``manifest.json``: the step and a sha256 of every file above, written last

It is written into a temporary folder, each file fsynced, and renamed into place:
a folder named ``step-*`` is complete, and a checksum mismatch means corruption.
Loading reads weights with safetensors and everything else with
``torch.load(weights_only=True)``: no pickle of arbitrary objects anywhere.
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
    """The parameters that training changes (tied weights appear once)."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


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
    """Write the checkpoint of ``state`` (a TrainState) atomically; keep the newest ``keep``."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:08d}"
    tmp = root / f".tmp-step-{state.step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_weights(state.model), tmp / "weights.safetensors")
    if state.value_head is not None:
        save_file(trainable_weights(state.value_head), tmp / "value_head.safetensors")
    torch.save(state.optimizer.state_dict(), tmp / "optimizer.pt")
    fault_point("checkpoint", state.step)              # a crash here leaves only the .tmp folder
    torch.save({
        "step": state.step,
        "rng": rng_state(),
        "rollout_generator": state.rollout_generator.get_state(),
        "shuffle_generator": state.shuffle_generator.get_state(),
        "sampler": state.sampler.state_dict(),
        "baseline": state.baseline.state_dict(),
        "reward_avg": state.reward_avg.state_dict(),
        "kl_coef": state.kl_coef.state_dict(),
        "bad_steps": state.bad_steps,
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
    for old in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


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
    """Restore ``state`` (a freshly built TrainState of the same config) from ``checkpoint``."""
    verify(checkpoint)
    weights = load_file(checkpoint / "weights.safetensors")
    _load_weights(state.model, weights, checkpoint)
    if state.value_head is not None:
        _load_weights(state.value_head, load_file(checkpoint / "value_head.safetensors"), checkpoint)
    state.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    saved = torch.load(checkpoint / "state.pt", weights_only=True)
    state.step = saved["step"]
    set_rng_state(saved["rng"])
    state.rollout_generator.set_state(saved["rollout_generator"])
    state.shuffle_generator.set_state(saved["shuffle_generator"])
    state.sampler.load_state_dict(saved["sampler"])
    state.baseline.load_state_dict(saved["baseline"])
    state.reward_avg.load_state_dict(saved["reward_avg"])
    state.kl_coef.load_state_dict(saved["kl_coef"])
    state.bad_steps = saved["bad_steps"]


def _load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], checkpoint: Path) -> None:
    params = dict(module.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise CheckpointError(f"checkpoint {checkpoint} does not fit this model "
                              f"({len(missing)} weights missing, {len(unknown)} unknown); was the model changed?")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
