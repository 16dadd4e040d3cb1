"""The one supervised fitting loop that SFT and reward-model training share.

A supervised command has the same shape whatever it fits: a table is read and
split (``tasks.data.load_table``), a model is loaded, AdamW runs epochs of
shuffled batches with gradient clipping, a held-out number is measured before and
after, and the model is written whole into its output directory or not at all.
Each command supplies its config (a ``FitConfig`` with its own fields), how a
batch becomes a loss, and how the model is saved.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class FitConfig:
    data: str
    """the training table: JSONL, CSV or Parquet"""
    model: str = "tiny-random"
    """the starting model: a local Hugging Face directory, a .gguf file or a built-in name"""
    output_dir: str = "runs/fit"
    """where the trained model is saved (Hugging Face format)"""
    test_path: str | None = None
    """a separate held-out table (default: a test_fraction of data)"""
    test_fraction: float = 0.1
    """share of data held out for the before/after measurement (seeded)"""
    epochs: int = 1
    """passes over the training rows"""
    batch_size: int = 16
    """rows per optimizer step"""
    lr: float = 1e-4
    """AdamW learning rate"""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay"""
    max_grad_norm: float = 1.0
    """clip the global gradient norm to this (0: off)"""
    dtype: str = "float32"
    """compute dtype: float32, or bfloat16 autocast (never float16 on CPU)"""
    seed: int = 0
    """seeds the split, the shuffling and any new weights"""
    cache_dir: str | None = None
    """model cache for built-in names and .gguf files (default $TOKRL_CACHE or ~/.cache/tokrl)"""

    def checks(self) -> list[tuple[bool, str]]:
        """(condition, message if it fails) for every field; subclasses add their own."""
        return [(self.epochs >= 1, "epochs must be >= 1"), (self.batch_size >= 1, "batch size must be >= 1"),
                (self.lr > 0, "learning rate must be > 0"),
                (0.0 <= self.test_fraction < 1.0, "test fraction must lie in [0, 1)"),
                (self.dtype in ("float32", "bfloat16"), f"dtype {self.dtype!r} is not float32 or bfloat16")]

    def validate(self) -> None:
        for ok, message in self.checks():
            if not ok:
                raise ValueError(message)


BatchLoss = Callable[[list[Any]], tuple[Tensor, dict[str, float]]]
"""a batch of training rows -> (the scalar loss to minimise, extra numbers for the progress bar)"""


def run_epochs(model: torch.nn.Module, rows: list[Any], batch_loss: BatchLoss, cfg: FitConfig,
        progress: Callable[[dict[str, float]], None] | None = None) -> tuple[int, float]:
    """Epochs of shuffled batches of ``rows`` with AdamW on ``model``'s trainable parameters.

    The order of each epoch comes from a generator seeded with ``cfg.seed``. Leaves the
    model in eval mode. returns (optimizer steps taken, the last batch's loss).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    order_rng = torch.Generator().manual_seed(cfg.seed)
    model.train()
    steps, last = 0, math.nan
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(rows), generator=order_rng).tolist()
        for start in range(0, len(order), cfg.batch_size):
            loss, extra = batch_loss([rows[i] for i in order[start:start + cfg.batch_size]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
            optimizer.step()
            steps, last = steps + 1, loss.item()
            if progress is not None:
                progress({"epoch": epoch + 1, "step": steps, "loss": last, **extra})
    model.eval()
    return steps, last


def batches_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


# ------------------------------------------------------------------------ CLI

def add_fit_arguments(p: argparse.ArgumentParser, data_help: str, output: str, epochs: int) -> None:
    """The options every fitting command takes (its own come after)."""
    p.add_argument("data", help=data_help)
    p.add_argument("--model", default="tiny-random", help="starting model: directory, .gguf or built-in name")
    p.add_argument("--output", default=output, help=f"where to save the trained model (default {output})")
    p.add_argument("--test-data", default=None, help="held-out table (default: --test-fraction of data)")
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def fit_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The FitConfig fields of ``add_fit_arguments``' options."""
    return dict(data=args.data, model=args.model, output_dir=args.output, test_path=args.test_data,
                test_fraction=args.test_fraction, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                dtype=args.dtype, seed=args.seed)


def run_command(cfg: FitConfig, args: argparse.Namespace, prepare: Callable[[Any], Any],
                fit: Callable[[Any, Callable], dict[str, Any]], save: Callable[[Any, Any, dict], None],
                num_rows: Callable[[Any], int], name: str, postfix: Callable[[dict], dict]) -> int:
    """Validate, load (nothing written yet), fit with a progress bar, save whole, print a JSON summary.

    prepare(cfg) -> run; fit(run, progress) -> summary; save(run, directory, summary);
    num_rows(run): training rows; postfix(progress record) -> what the bar shows.
    """
    from tqdm import tqdm

    from tokrl.offline.output import check_output_dir, staged_output

    cfg.validate()
    out = check_output_dir(cfg.output_dir, args.overwrite)
    run = prepare(cfg)                                      # bad data or model: nothing written yet
    bar = tqdm(total=cfg.epochs * batches_per_epoch(num_rows(run), cfg.batch_size), desc=name, unit="step",
               file=sys.stderr, disable=args.quiet, dynamic_ncols=True)

    def progress(m: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix(**postfix(m))

    summary = fit(run, progress)
    bar.close()
    with staged_output(out) as tmp:
        save(run, tmp, summary)
    print(json.dumps({"output": str(out), **summary}, indent=2))
    return 0


def record(cfg: FitConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """What is saved beside a trained model: its config and its training summary."""
    return {"config": asdict(cfg), **summary}
