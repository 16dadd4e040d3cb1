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
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

IGNORE = -100
"""label of a position that is not a target (prompt and padding)"""


@dataclass
class SFTConfig:
    data: str
    """prompt/completion table: JSONL, CSV or Parquet"""
    model: str = "tiny-random"
    """the starting policy: a local Hugging Face directory, a .gguf file or a built-in name"""
    output_dir: str = "runs/sft"
    """where the trained policy is saved (Hugging Face format)"""
    prompt_column: str = "prompt"
    """the column that holds the prompt"""
    completion_column: str = "completion"
    """the column that holds the target completion"""
    test_path: str | None = None
    """a separate held-out table (default: a test_fraction of data)"""
    test_fraction: float = 0.1
    """share of data held out for the loss before/after (seeded)"""
    epochs: int = 3
    """passes over the training rows"""
    batch_size: int = 16
    """pairs per optimizer step"""
    lr: float = 1e-4
    """AdamW learning rate"""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay"""
    max_grad_norm: float = 1.0
    """clip the global gradient norm to this (0: off)"""
    max_length: int | None = None
    """longest prompt + completion in tokens; longer completions are cut (default: the model's context)"""
    add_eos: bool = True
    """append EOS to every completion, so the policy learns where to stop"""
    chat_template: bool = False
    """wrap each prompt in the tokenizer's chat template (as model.chat_template does in RL)"""
    dtype: str = "float32"
    """compute dtype: float32, or bfloat16 autocast (never float16 on CPU)"""
    seed: int = 0
    """seeds the split, the shuffling and torch"""
    cache_dir: str | None = None
    """model cache for built-in names and .gguf files (default $TOKRL_CACHE or ~/.cache/tokrl)"""

    def validate(self) -> None:
        checks = [(self.epochs >= 1, "epochs must be >= 1"), (self.batch_size >= 1, "batch size must be >= 1"),
                  (self.lr > 0, "learning rate must be > 0"), (0.0 <= self.test_fraction < 1.0,
                                                                "test fraction must lie in [0, 1)"),
                  (self.dtype in ("float32", "bfloat16"), f"dtype {self.dtype!r} is not float32 or bfloat16"),
                  (self.max_length is None or self.max_length >= 2, "max length must be >= 2")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# ------------------------------------------------------------------------ data

def encode_example(tokenizer, prompt: str, completion: str, chat_template: bool = False, add_eos: bool = True,
                   max_length: int | None = None) -> tuple[list[int], int]:
    """(ids, P): prompt ids (as the rollout encodes them) followed by completion ids
    (+ EOS), and the number P of prompt ids. A completion that does not fit in
    ``max_length`` is cut at its end; a prompt that leaves no room raises ValueError."""
    from tokrl.env import encode_prompt
    from tokrl.rollout import format_prompt

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


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded batch: input_ids (B, L) long, attention (B, L) long, labels (B, L) long
    holding the token id on completion positions and IGNORE on prompt and padding."""
    L = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    attention = torch.zeros(len(examples), L, dtype=torch.long)
    labels = torch.full((len(examples), L), IGNORE, dtype=torch.long)
    for i, (seq, P) in enumerate(examples):
        ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        labels[i, P: len(seq)] = torch.tensor(seq[P:])
    return ids, attention, labels


def completion_nll(model, ids: Tensor, attention: Tensor, labels: Tensor, dtype: str = "float32"
                   ) -> tuple[Tensor, Tensor]:
    """(sum over completion tokens of −log p(token | everything before it), their count).

    ids, attention, labels: (B, L).  returns two scalars; the first is differentiable.
    """
    from tokrl.losses import token_logprobs
    from tokrl.models import autocast

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
    from tokrl.data import load_table
    from tokrl.models import load_policy

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
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    order_rng = torch.Generator().manual_seed(cfg.seed)
    model.train()
    steps, last = 0, math.nan
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(run.train), generator=order_rng).tolist()
        for start in range(0, len(order), cfg.batch_size):
            batch = [run.train[i] for i in order[start:start + cfg.batch_size]]
            nll, n = completion_nll(model, *collate(batch, pad), cfg.dtype)
            loss = nll / n.clamp(min=1.0)                                   # token-mean over the batch
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
            optimizer.step()
            steps, last = steps + 1, loss.item()
            if progress is not None:
                progress({"epoch": epoch + 1, "step": steps, "loss": last})
    model.eval()
    after = heldout_loss(model, run.test, pad, cfg.batch_size, cfg.dtype)
    return {"train_examples": len(run.train), "test_examples": len(run.test), "steps": steps,
            "train_loss_last": last, "test_loss_before": before, "test_loss_after": after}


def save(run: SFTRun, directory, summary: dict[str, Any]) -> None:
    """The policy in Hugging Face format, plus sft.json (config and summary)."""
    from pathlib import Path

    from tokrl.models import save_policy

    save_policy(run.model, run.tokenizer, directory)
    (Path(directory) / "sft.json").write_text(json.dumps({"config": asdict(run.cfg), **summary}, indent=2) + "\n")


def batches_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


# ------------------------------------------------------------------------ CLI

def add_command(subparsers) -> None:
    p = subparsers.add_parser("sft", help="supervised warm start on prompt/completion pairs")
    p.add_argument("data", help="JSONL, CSV or Parquet with prompt and completion columns")
    p.add_argument("--model", default="tiny-random", help="starting model: directory, .gguf or built-in name")
    p.add_argument("--output", default="runs/sft", help="where to save the trained policy (default runs/sft)")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--completion-column", default="completion")
    p.add_argument("--test-data", default=None, help="held-out table (default: --test-fraction of data)")
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=None, help="longest prompt+completion in tokens")
    p.add_argument("--no-eos", action="store_true", help="do not append EOS to completions")
    p.add_argument("--chat-template", action="store_true", help="wrap prompts in the tokenizer's chat template")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tokrl.data import check_output_dir, staged_output

    cfg = SFTConfig(data=args.data, model=args.model, output_dir=args.output, prompt_column=args.prompt_column,
                    completion_column=args.completion_column, test_path=args.test_data,
                    test_fraction=args.test_fraction, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    max_length=args.max_length, add_eos=not args.no_eos, chat_template=args.chat_template,
                    dtype=args.dtype, seed=args.seed)
    cfg.validate()
    out = check_output_dir(cfg.output_dir, args.overwrite)
    run = prepare(cfg)                                      # bad data or model: nothing written yet
    bar = tqdm(total=cfg.epochs * batches_per_epoch(len(run.train), cfg.batch_size), desc="sft", unit="step",
               file=sys.stderr, disable=args.quiet, dynamic_ncols=True)

    def progress(m: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix(epoch=m["epoch"], loss=f"{m['loss']:.3f}")

    summary = fit(run, progress)
    bar.close()
    with staged_output(out) as tmp:
        save(run, tmp, summary)
    print(json.dumps({"output": str(out), **summary}, indent=2))
    return 0
