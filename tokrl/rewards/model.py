"""Learned reward models: r(prompt, completion), one scalar, from a Hugging Face directory.

Two kinds, told apart by what the directory holds:

- ``classifier``: any ``AutoModelForSequenceClassification`` with one label
  (``num_labels: 1`` in config.json), the usual format of published reward models;
- ``scalar_head``: a causal LM directory plus ``reward_head.safetensors``, a linear
  head on the last hidden state (tokrl's ``ValueHead``) read at the last token.

The input is the prompt's ids followed by the completion's ids, each tokenized on
its own without special tokens (as the policy saw them), right-padded; the score
is read at the last real token. A sequence longer than ``max_length`` loses its
oldest tokens, so the completion is always seen.

A directory is also of one **level**, recorded in ``reward_model.json``: ``sequence``
(one score per completion, the default and what published reward models are) or
``step`` (a process reward model, PRM: a score at the last token of every step, from
the same head applied at every position; ``tokrl.rewards.steps``). Each level refuses
a directory of the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tokrl.models.forward import autocast
from tokrl.models.heads import ValueHead

HEAD_FILE = "reward_head.safetensors"
INFO_FILE = "reward_model.json"
KINDS = ("classifier", "scalar_head")
LEVELS = ("sequence", "step")


def encode(tokenizer, prompts: list[str], completions: list[str], max_length: int | None) -> list[list[int]]:
    """Prompt ids + completion ids per pair, cut from the left to ``max_length`` tokens."""
    out = []
    for prompt, completion in zip(prompts, completions):
        ids = (tokenizer(prompt, add_special_tokens=False)["input_ids"]
               + tokenizer(completion, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError("a reward model needs at least one token of prompt or completion; got both empty")
        out.append(ids[-max_length:] if max_length else ids)
    return out


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """ids (N, L) long right-padded with ``pad_id``, and mask (N, L) long, L = longest."""
    L = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad_id] * (L - len(s)) for s in seqs], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in seqs], dtype=torch.long)
    return ids, mask


class RewardModel(nn.Module):
    """A scalar per sequence from a classifier, or from a causal LM plus a linear head."""

    def __init__(self, backbone: nn.Module, kind: str, head: ValueHead | None = None, level: str = "sequence"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown reward model kind {kind!r}; choose {' or '.join(KINDS)}")
        if (kind == "scalar_head") != (head is not None):
            raise ValueError("a scalar_head reward model needs a head; a classifier has its own")
        if level not in LEVELS:
            raise ValueError(f"unknown reward model level {level!r}; choose {' or '.join(LEVELS)}")
        self.backbone, self.kind, self.head, self.level = backbone, kind, head, level

    @property
    def max_length(self) -> int | None:
        return getattr(self.backbone.config, "max_position_embeddings", None)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask: (N, L) right-padded.  returns: (N,) float32 scores."""
        if self.kind == "classifier":
            # Hugging Face reads the score at the last token that is not the pad id;
            # tokrl never puts a pad id inside a sequence
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        last = attention_mask.sum(dim=1) - 1                                       # (N,)
        return self.token_scores(input_ids, attention_mask)[torch.arange(len(last)), last]   # (N,)

    def token_scores(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The head at every position: (N, L) float32 from input_ids, attention_mask (N, L).

        A classifier's own score layer (num_labels 1) is applied to every hidden state, so
        position t scores the prefix up to t exactly as the classifier would score it whole.
        """
        # the trunk alone: the LM head's (N, L, V) logits are never needed
        trunk = getattr(self.backbone, self.backbone.base_model_prefix)
        hidden = trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state   # (N, L, H)
        if self.kind == "classifier":
            return self.backbone.score(hidden)[..., 0].float()                     # (N, L)
        return self.head(hidden)                                                   # (N, L)

    @torch.no_grad()
    def score(self, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 32,
              dtype: str = "float32") -> list[float]:
        """r(prompt, completion) for each pair, in batches."""
        was_training = self.training
        self.eval()
        seqs = encode(tokenizer, prompts, completions, self.max_length)
        out: list[float] = []
        for start in range(0, len(seqs), batch_size):
            ids, mask = pad_right(seqs[start:start + batch_size], tokenizer.pad_token_id)
            with autocast(dtype):
                out += self(ids, mask).float().tolist()
        self.train(was_training)
        return out

    def save_pretrained(self, directory: str | Path, tokenizer, info: dict[str, Any] | None = None) -> None:
        """Hugging Face format (safetensors), plus the head for a scalar_head model and
        ``reward_model.json`` (kind and training summary)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        if self.head is not None:
            save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, directory / HEAD_FILE)
        (directory / INFO_FILE).write_text(json.dumps({"kind": self.kind, "level": self.level, **(info or {})},
                                                      indent=2) + "\n")


def _tokenizer(directory: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"the tokenizer in {directory} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def init_reward_model(base: str | Path, kind: str = "classifier", cache_dir: str | None = None,
                      level: str = "sequence"):
    """(RewardModel, tokenizer) to train from the causal LM ``base`` (a directory, .gguf
    file or built-in name): its trunk, and a new scalar output, of ``level`` sequence or step."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from tokrl.models.pretrained import resolve_model

    if kind not in KINDS:
        raise ValueError(f"unknown reward model head {kind!r}; choose {' or '.join(KINDS)}")
    directory = resolve_model(base, cache_dir)
    tokenizer = _tokenizer(directory)
    if kind == "classifier":
        from transformers.utils import logging as hf_logging

        # the new score layer is reported as "missing from the checkpoint": expected here
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            backbone = AutoModelForSequenceClassification.from_pretrained(
                directory, num_labels=1, dtype=torch.float32, local_files_only=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        backbone.config.pad_token_id = tokenizer.pad_token_id
        return RewardModel(backbone, kind, level=level), tokenizer
    backbone = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True)
    return RewardModel(backbone, kind, ValueHead(backbone.config.hidden_size), level), tokenizer


def saved_level(directory: Path) -> str:
    """The level a reward model directory records (``sequence`` when it records none)."""
    info = directory / INFO_FILE
    if not info.is_file():
        return "sequence"
    try:
        return json.loads(info.read_text()).get("level", "sequence")
    except (json.JSONDecodeError, AttributeError):
        raise ValueError(f"{info} is not a JSON object; the reward model directory is damaged") from None


def check_level(directory: Path, level: str) -> None:
    """Raise ValueError unless the reward model in ``directory`` is of ``level``."""
    have = saved_level(directory)
    if have == level:
        return
    if have == "step":
        raise ValueError(f"{directory} is a step-level reward model (a PRM): use it with level: step "
                         f"(or --level step), or train a sequence-level one without --level step")
    raise ValueError(f"{directory} is a {have}-level reward model, not a step-level one (a PRM); "
                     f"train one with `tokrl reward-model train DATA --level step`")


def load_reward_model(directory: str | Path, level: str = "sequence"):
    """(RewardModel, tokenizer) from a reward model directory (either kind) of ``level``;
    a directory of the other level is refused (ValueError)."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
    )

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"reward model {directory} not found (no config.json there); "
                                f"train one with `tokrl reward-model train`")
    check_level(directory, level)
    tokenizer = _tokenizer(directory)
    if (directory / HEAD_FILE).is_file():
        from safetensors.torch import load_file

        backbone = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True)
        head = ValueHead(backbone.config.hidden_size)
        head.load_state_dict(load_file(directory / HEAD_FILE))
        model = RewardModel(backbone, "scalar_head", head, level)
    else:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        if not any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
            raise ValueError(f"{directory} is not a reward model: neither a sequence classifier nor a causal LM "
                             f"with {HEAD_FILE}; train one with `tokrl reward-model train`")
        if config.num_labels != 1:
            raise ValueError(f"{directory} is a classifier with {config.num_labels} labels; a reward model "
                             f"has one scalar output (num_labels 1)")
        backbone = AutoModelForSequenceClassification.from_pretrained(directory, dtype=torch.float32,
                                                                       local_files_only=True)
        if backbone.config.pad_token_id is None:
            backbone.config.pad_token_id = tokenizer.pad_token_id
        model = RewardModel(backbone, "classifier", level=level)
    return model.eval().requires_grad_(False), tokenizer


class RewardModelReward:
    """A reward model directory as a sequence-level reward: r(prompt, completion)."""

    columns: tuple[str, ...] = ()

    def __init__(self, directory: str | Path, batch_size: int = 32, dtype: str = "float32"):
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"reward_model dtype must be float32 or bfloat16, got {dtype!r}")
        self.directory = Path(directory)
        self.model, self.tokenizer = load_reward_model(self.directory)
        self.batch_size, self.dtype = batch_size, dtype
        self.__name__ = "reward_model"

    def __call__(self, prompts: list[str], completions: list[str], **kwargs) -> list[float]:
        return self.model.score(self.tokenizer, prompts, completions, self.batch_size, self.dtype)
