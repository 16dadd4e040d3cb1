"""Supervised warm start: `tokrl sft` fits the initial policy to prompt/completion pairs.

The loss is the mean negative log-likelihood of the completion tokens only (and of
an EOS after each completion, so the policy learns to stop); the prompt is context,
never a target. The prompt is encoded exactly as the RL rollout encodes it (the
same chat template switch, no special tokens), so the saved model, used as
``model.name`` of an RL recipe, sees the format it was trained on.

    tokrl sft data/pairs.jsonl --model tiny-random --output runs/sft --epochs 3
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokrl.offline.fit import FitConfig, add_fit_arguments, fit_fields, record, run_command, run_epochs

IGNORE = -100
"""label of a position that is not a target (prompt and padding)"""


@dataclass
class SFTConfig(FitConfig):
    output_dir: str = "runs/sft"
    """where the trained policy is saved (Hugging Face format)"""
    epochs: int = 3
    """passes over the training rows"""
    prompt_column: str = "prompt"
    """the column that holds the prompt"""
    completion_column: str = "completion"
    """the column that holds the target completion"""
    max_length: int | None = None
    """longest prompt + completion in tokens; longer completions are cut (default: the model's context)"""
    add_eos: bool = True
    """append EOS to every completion, so the policy learns where to stop"""
    chat_template: bool = False
    """wrap each prompt in the tokenizer's chat template (as model.chat_template does in RL)"""

    def checks(self) -> list[tuple[bool, str]]:
        return [*super().checks(), (self.max_length is None or self.max_length >= 2, "max length must be >= 2")]


# ------------------------------------------------------------------------ data

def encode_example(tokenizer, prompt: str, completion: str, chat_template: bool = False, add_eos: bool = True,
                   max_length: int | None = None) -> tuple[list[int], int]:
    """(ids, P): prompt ids (as the rollout encodes them) followed by completion ids
    (+ EOS), and the number P of prompt ids. A completion that does not fit in
    ``max_length`` is cut at its end; a prompt that leaves no room raises ValueError."""
    from tokrl.generation.prompts import encode_prompt, format_prompt

    # trap: prompt and completion are tokenized apart, never as one string, so the
    # boundary is exact and the prompt ids are the ones the policy will be given
    prompt_ids = encode_prompt(tokenizer, format_prompt(tokenizer, prompt, chat_template))
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if add_eos:
        completion_ids.append(tokenizer.eos_token_id)
    if not prompt_ids:
        raise ValueError(f"empty prompt (completion {completion[:40]!r}); every prompt needs at least one token")
    if not completion_ids:
        raise ValueError(f"empty completion for prompt {prompt[:40]!r} and add_eos off: nothing to learn")
    if max_length is not None:
        if len(prompt_ids) >= max_length:
            raise ValueError(f"a prompt has {len(prompt_ids)} tokens, leaving no room for its completion "
                             f"within max_length {max_length}: {prompt[:40]!r}")
        completion_ids = completion_ids[: max_length - len(prompt_ids)]
    return prompt_ids + completion_ids, len(prompt_ids)


def collate(examples: list[tuple], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded batch: input_ids (B, L) long, attention (B, L) long, labels (B, L) long
    holding the token id on completion positions and IGNORE on prompt and padding.

    A row is (ids, P), or (ids, P, targets) with targets one bool per completion id: a
    multi-turn demonstration, whose environment ids (False) are context, never targets."""
    L = max(len(row[0]) for row in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    attention = torch.zeros(len(examples), L, dtype=torch.long)
    labels = torch.full((len(examples), L), IGNORE, dtype=torch.long)
    for i, (seq, P, *targets) in enumerate(examples):
        ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        labels[i, P: len(seq)] = torch.tensor(seq[P:])
        if targets:
            labels[i, P: len(seq)].masked_fill_(~torch.tensor(targets[0], dtype=torch.bool), IGNORE)
    return ids, attention, labels


def completion_nll(model, ids: Tensor, attention: Tensor, labels: Tensor, dtype: str = "float32"
                   ) -> tuple[Tensor, Tensor]:
    """(sum over completion tokens of −log p(token | everything before it), their count).

    ids, attention, labels: (B, L).  returns two scalars; the first is differentiable.
    """
    from tokrl.losses import token_logprobs
    from tokrl.models.forward import autocast, device_of

    ids, attention, labels = (x.to(device_of(model)) for x in (ids, attention, labels))
    with autocast(dtype):
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]       # (B, L-1, V)
    targets = labels[:, 1:]                                                          # position t predicts t+1
    mask = (targets != IGNORE).float()                                               # (B, L-1)
    logp = token_logprobs(logits, targets.clamp(min=0))                              # (B, L-1) float32
    return -(logp * mask).sum(), mask.sum()


@torch.no_grad()
def heldout_loss(model, examples: list[tuple[list[int], int]], pad_id: int, batch_size: int,
                 dtype: str = "float32") -> float | None:
    """Mean NLL per completion token over ``examples`` (None if there are none)."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        nll, n = completion_nll(model, *collate(examples[start:start + batch_size], pad_id), dtype)
        total, count = total + float(nll), count + float(n)
    model.train(was_training)
    return total / max(count, 1.0)


# ------------------------------------------------------------------------ training

@dataclass
class SFTRun:
    """Everything loaded and encoded, before any step: bad input has failed by now."""

    cfg: SFTConfig
    model: Any
    tokenizer: Any
    train: list[tuple[list[int], int]]
    test: list[tuple[list[int], int]]


def prepare(cfg: SFTConfig) -> SFTRun:
    """Load the data and the model, and encode every pair."""
    from tokrl.config import ModelConfig
    from tokrl.tasks.data import load_table
    from tokrl.models.load import load_policy

    cfg.validate()
    torch.manual_seed(cfg.seed)
    columns = [cfg.prompt_column, cfg.completion_column]
    train_rows, test_rows = load_table(cfg.data, columns, cfg.test_path, cfg.test_fraction, cfg.seed,
                                       option="--prompt-column / --completion-column")
    model, tokenizer = load_policy(ModelConfig(name=cfg.model, chat_template=cfg.chat_template,
                                               cache_dir=cfg.cache_dir))
    context = getattr(model.config, "max_position_embeddings", None)
    max_length = min(x for x in (cfg.max_length, context) if x) if (cfg.max_length or context) else None

    def encode(rows):
        return [encode_example(tokenizer, str(r[cfg.prompt_column]), str(r[cfg.completion_column]),
                               cfg.chat_template, cfg.add_eos, max_length) for r in rows]
    return SFTRun(cfg, model, tokenizer, encode(train_rows), encode(test_rows))


def fit(run: SFTRun, progress: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train ``run.model`` in place; returns the summary (losses before and after)."""
    cfg, model, pad = run.cfg, run.model, run.tokenizer.pad_token_id
    before = heldout_loss(model, run.test, pad, cfg.batch_size, cfg.dtype)

    def batch_loss(batch: list[tuple[list[int], int]]) -> tuple[Tensor, dict[str, float]]:
        nll, n = completion_nll(model, *collate(batch, pad), cfg.dtype)
        return nll / n.clamp(min=1.0), {}                                 # token-mean over the batch

    steps, last = run_epochs(model, run.train, batch_loss, cfg, progress)
    after = heldout_loss(model, run.test, pad, cfg.batch_size, cfg.dtype)
    return {"train_examples": len(run.train), "test_examples": len(run.test), "steps": steps,
            "train_loss_last": last, "test_loss_before": before, "test_loss_after": after}


def save(run: SFTRun, directory, summary: dict[str, Any]) -> None:
    """The policy in Hugging Face format, plus sft.json (config and summary)."""
    from pathlib import Path

    from tokrl.models.load import save_policy

    save_policy(run.model, run.tokenizer, directory)
    (Path(directory) / "sft.json").write_text(json.dumps(record(run.cfg, summary), indent=2) + "\n")


# ------------------------------------------------------------------------ CLI

def add_command(subparsers) -> None:
    p = subparsers.add_parser("sft", help="supervised warm start on prompt/completion pairs")
    add_fit_arguments(p, "JSONL, CSV or Parquet with prompt and completion columns", "runs/sft", epochs=3)
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--completion-column", default="completion")
    p.add_argument("--max-length", type=int, default=None, help="longest prompt+completion in tokens")
    p.add_argument("--no-eos", action="store_true", help="do not append EOS to completions")
    p.add_argument("--chat-template", action="store_true", help="wrap prompts in the tokenizer's chat template")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    cfg = SFTConfig(**fit_fields(args), prompt_column=args.prompt_column, completion_column=args.completion_column,
                    max_length=args.max_length, add_eos=not args.no_eos, chat_template=args.chat_template)
    return run_command(cfg, args, prepare, fit, save, lambda run: len(run.train), "sft",
                       lambda m: {"epoch": m["epoch"], "loss": f"{m['loss']:.3f}"})
