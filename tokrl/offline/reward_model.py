"""Learned rewards: `tokrl reward-model train` fits a Bradley-Terry model on preference pairs.

Each row of the data is (prompt, chosen, rejected). The model scores r(prompt,
completion) and is trained so that the chosen completion wins:

    P(chosen ≻ rejected) = σ(r(x, y_c) − r(x, y_r)),   loss = −log σ(r(x, y_c) − r(x, y_r))

The held-out pairwise accuracy (the share of pairs with r(x, y_c) > r(x, y_r)) is
reported before and after training. The result is a Hugging Face directory
(``tokrl.rewards.model``) that a recipe uses as ``{reward_model: <dir>}``.

    tokrl reward-model train data/prefs.jsonl --model tiny-random --output runs/rm
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tokrl.offline.fit import FitConfig, add_fit_arguments, fit_fields, record, run_command, run_epochs
from tokrl.offline import process_reward
from tokrl.offline.process_reward import add_step_arguments, add_steps_data_command


@dataclass
class RewardModelConfig(FitConfig):
    output_dir: str = "runs/reward_model"
    """where the trained reward model is saved (Hugging Face format)"""
    head: str = "classifier"
    """classifier (AutoModelForSequenceClassification, num_labels 1) or scalar_head (the causal
    LM plus a linear head saved beside it)"""
    prompt_column: str = "prompt"
    """the column that holds the prompt"""
    chosen_column: str = "chosen"
    """the column that holds the preferred completion"""
    rejected_column: str = "rejected"
    """the column that holds the other completion"""

    def checks(self) -> list[tuple[bool, str]]:
        from tokrl.rewards.model import KINDS

        return [(self.head in KINDS, f"head {self.head!r} is not one of {', '.join(KINDS)}"), *super().checks()]


# ------------------------------------------------------------------------ the math

def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """−log σ(r_c − r_r), averaged over pairs.  chosen, rejected: (B,) scores.  returns: scalar."""
    return -F.logsigmoid(chosen - rejected).mean()


def pairwise_accuracy(chosen: Tensor, rejected: Tensor) -> float:
    """Share of pairs the model ranks right (a tie counts as wrong).  chosen, rejected: (B,)."""
    return float((chosen > rejected).float().mean())


# ------------------------------------------------------------------------ training

Pair = tuple[str, str, str]
"""(prompt, chosen, rejected)"""


def pair_scores(model, tokenizer, pairs: list[Pair], dtype: str = "float32") -> tuple[Tensor, Tensor]:
    """(r(x, y_c), r(x, y_r)), each (B,), from one forward pass over the 2B sequences."""
    from tokrl.models.forward import autocast
    from tokrl.rewards.model import encode, pad_right

    prompts = [p for p, _, _ in pairs] * 2
    completions = [c for _, c, _ in pairs] + [r for _, _, r in pairs]
    ids, mask = pad_right(encode(tokenizer, prompts, completions, model.max_length), tokenizer.pad_token_id)
    with autocast(dtype):
        scores = model(ids, mask).float()                              # (2B,)
    return scores[: len(pairs)], scores[len(pairs):]


@torch.no_grad()
def evaluate_pairs(model, tokenizer, pairs: list[Pair], batch_size: int = 32, dtype: str = "float32"
                   ) -> dict[str, float] | None:
    """{"accuracy", "loss", "margin"} over ``pairs`` (None if there are none)."""
    if not pairs:
        return None
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        c, r = pair_scores(model, tokenizer, pairs[start:start + batch_size], dtype)
        chosen.append(c)
        rejected.append(r)
    model.train(was_training)
    c, r = torch.cat(chosen), torch.cat(rejected)
    return {"accuracy": pairwise_accuracy(c, r), "loss": float(bradley_terry_loss(c, r)),
            "margin": float((c - r).mean())}


@dataclass
class RewardModelRun:
    """Everything loaded before any step: bad input has failed by now."""

    cfg: RewardModelConfig
    model: Any
    tokenizer: Any
    train: list[Pair]
    test: list[Pair]


def prepare(cfg: RewardModelConfig) -> RewardModelRun:
    """Load the pairs and the starting model (with a new scalar output)."""
    from tokrl.tasks.data import load_table
    from tokrl.rewards.model import init_reward_model

    cfg.validate()
    columns = [cfg.prompt_column, cfg.chosen_column, cfg.rejected_column]
    train_rows, test_rows = load_table(cfg.data, columns, cfg.test_path, cfg.test_fraction, cfg.seed,
                                       option="--prompt-column / --chosen-column / --rejected-column")
    torch.manual_seed(cfg.seed)          # the new head's initialisation
    model, tokenizer = init_reward_model(cfg.model, cfg.head, cfg.cache_dir)

    def pairs(rows):
        return [tuple(str(r[c]) for c in columns) for r in rows]
    return RewardModelRun(cfg, model, tokenizer, pairs(train_rows), pairs(test_rows))


def fit(run: RewardModelRun, progress: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train ``run.model`` in place; returns the summary (held-out accuracy before and after)."""
    cfg, model = run.cfg, run.model
    before = evaluate_pairs(model, run.tokenizer, run.test, cfg.batch_size, cfg.dtype)

    def batch_loss(batch: list[Pair]) -> tuple[Tensor, dict[str, float]]:
        chosen, rejected = pair_scores(model, run.tokenizer, batch, cfg.dtype)
        return bradley_terry_loss(chosen, rejected), {"accuracy": pairwise_accuracy(chosen.detach(), rejected.detach())}

    steps, last = run_epochs(model, run.train, batch_loss, cfg, progress)
    after = evaluate_pairs(model, run.tokenizer, run.test, cfg.batch_size, cfg.dtype)
    return {"head": cfg.head, "train_pairs": len(run.train), "test_pairs": len(run.test), "steps": steps,
            "train_loss_last": last, "test_before": before, "test_after": after}


def save(run: RewardModelRun, directory, summary: dict[str, Any]) -> None:
    run.model.save_pretrained(directory, run.tokenizer, record(run.cfg, summary))


# ------------------------------------------------------------------------ CLI

def add_command(subparsers) -> None:
    p = subparsers.add_parser("reward-model", help="train or evaluate a learned reward model")
    sub = p.add_subparsers(dest="reward_model_command", required=True)

    t = sub.add_parser("train", help="fit a Bradley-Terry reward model on preference pairs, or with "
                                     "--level step a process reward model on stepwise data")
    add_fit_arguments(t, "JSONL, CSV or Parquet with prompt, chosen and rejected columns (--level step: "
                         "prompt, completions, labels)", "runs/reward_model", epochs=1)
    t.add_argument("--head", default="classifier", choices=["classifier", "scalar_head"],
                   help="classifier: AutoModelForSequenceClassification; scalar_head: causal LM + linear head")
    t.add_argument("--prompt-column", default="prompt")
    t.add_argument("--chosen-column", default="chosen")
    t.add_argument("--rejected-column", default="rejected")
    t.add_argument("--level", default="sequence", choices=["sequence", "step"],
                   help="sequence: Bradley-Terry on pairs; step: a process reward model on stepwise data "
                        "(prompt, completions, labels), one score per step")
    add_step_arguments(t)
    t.set_defaults(func=_train_cli)

    e = sub.add_parser("eval", help="held-out pairwise accuracy of a reward model, as JSON")
    e.add_argument("model", help="a reward model directory")
    e.add_argument("data", help="JSONL, CSV or Parquet with prompt, chosen and rejected columns")
    e.add_argument("--prompt-column", default="prompt")
    e.add_argument("--chosen-column", default="chosen")
    e.add_argument("--rejected-column", default="rejected")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--level", default="sequence", choices=["sequence", "step"],
                   help="step: held-out step accuracy of a process reward model on stepwise data")
    add_step_arguments(e)
    e.set_defaults(func=_eval_cli)
    add_steps_data_command(sub)


def _train_cli(args: argparse.Namespace) -> int:
    if args.level == "step":
        return process_reward.train_cli(args, fit_fields(args))
    cfg = RewardModelConfig(**fit_fields(args), head=args.head, prompt_column=args.prompt_column,
                            chosen_column=args.chosen_column, rejected_column=args.rejected_column)
    return run_command(cfg, args, prepare, fit, save, lambda run: len(run.train), "reward-model",
                       lambda m: {"epoch": m["epoch"], "loss": f"{m['loss']:.3f}", "acc": f"{m['accuracy']:.2f}"})


def _eval_cli(args: argparse.Namespace) -> int:
    from tokrl.tasks.data import read_rows, require_columns
    from tokrl.rewards.model import load_reward_model

    if args.level == "step":
        return process_reward.eval_cli(args)
    columns = [args.prompt_column, args.chosen_column, args.rejected_column]
    rows = read_rows(args.data)
    require_columns(rows, columns, args.data, "--prompt-column / --chosen-column / --rejected-column")
    model, tokenizer = load_reward_model(args.model)
    pairs = [tuple(str(r[c]) for c in columns) for r in rows]
    result = evaluate_pairs(model, tokenizer, pairs, args.batch_size)
    print(json.dumps({"model": args.model, "data": args.data, "pairs": len(pairs), **result}))
    return 0
