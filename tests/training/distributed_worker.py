"""One process of a multi-process test run (tests/training/test_distributed.py starts W of them).

    RANK=r WORLD_SIZE=W MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/training/distributed_worker.py SPEC OUT

reads the JSON list of scenarios in SPEC and runs each through tokrl's own entry
points (build_state + train_step, or train with a resume); rank 0 saves what the
test compares to OUT/<name>.pt. The process group is joined from the environment
exactly as under torchrun (tokrl.training.distributed.init).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tokrl.training import distributed  # noqa: E402
from tokrl.config import load_config  # noqa: E402
from tokrl.training.loop import train, train_step  # noqa: E402
from tokrl.training.state import build_state  # noqa: E402
from tests.training.helpers import run_metrics  # noqa: E402


def weights(state) -> dict[str, torch.Tensor]:
    """Every trainable tensor, whole (gathered to rank 0 under FSDP), value head included."""
    if distributed.is_sharded(state.learner.model):
        out = distributed.full_state_dict(state.learner.model)
    else:
        out = {n: p.detach().clone() for n, p in state.learner.model.named_parameters() if p.requires_grad}
    if state.learner.value_head is not None:
        out.update({f"value_head.{n}": p.detach().clone() for n, p in state.learner.value_head.named_parameters()})
    return out


def steps(cfg, n: int) -> dict:
    state = build_state(cfg)
    tokens, metrics = [], []
    for _ in range(n):
        m, batch = train_step(state, cfg)
        tokens.append(batch.tokens)
        metrics.append(run_metrics(m))
    reference = state.reference.model if state.reference is not None else None
    sharded = {"policy": distributed.is_sharded(state.learner.model),
               "reference": reference is not None and distributed.is_sharded(reference)}
    return {"weights": weights(state), "tokens": tokens, "metrics": metrics, "sharded": sharded}


def resume(cfg, stop: int, total: int) -> dict:
    """An uninterrupted run of ``total`` steps, and one stopped after ``stop`` then resumed."""
    out = {}
    run = Path(cfg.train.output_dir)
    for name, plan in (("straight", [total]), ("resumed", [stop, total])):
        cfg.train.output_dir = str(run / name)
        for i, max_steps in enumerate(plan):
            cfg.train.max_steps = max_steps
            result = train(cfg, Path(cfg.train.output_dir), resume=i > 0)
        out[name] = weights(result["state"])
    return out


def main(spec_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    for scenario in json.loads(Path(spec_path).read_text()):
        cfg = load_config(scenario["recipe"], scenario["overrides"])
        distributed.init(cfg)
        if "resume" in scenario:
            result = resume(cfg, *scenario["resume"])
        else:
            result = steps(cfg, scenario["steps"])
        if distributed.is_main():
            torch.save(result, Path(out_dir) / f"{scenario['name']}.pt")
    distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
