"""The supervised warm start: fit the policy to the task's demonstrations before RL.

RL can only reinforce what the policy already samples. When the base model almost
never answers in the expected format (SmolLM2 writes "3 + 5 = 8" where the task
wants "8": 1 exact answer in 288 samples), a few passes of maximum likelihood on
right answers to the train-split prompts give RL something to reinforce: the seed's
"train an initial model". The demonstrations come from the task
(``Task.demonstration``), never from the test split, and are encoded as the rollout
encodes prompts (``offline.sft.encode_example``), so the policy is trained on the ids
it will be given.

It runs once, in a fresh run, after the evaluation before training: the held-out
numbers of step 0 stay those of the model the user started from. A checkpoint holds
the warm-started weights, so a resumed run does not run it again. Each process fits
its own copy on every demonstration (no gradient is exchanged), so all processes hold
the same weights afterwards.
"""

from __future__ import annotations

import time
from typing import Any

from torch import Tensor, nn

from tokrl.config import Config, ModelConfig
from tokrl.errors import ConfigError
from tokrl.offline.fit import FitConfig, run_epochs
from tokrl.generation.prompts import encode_prompt, format_prompt
from tokrl.generation.turns import ObservationFormat
from tokrl.offline.sft import collate, completion_nll, encode_example
from tokrl.tasks import EnvironmentTask, Example, Task


def demonstrations(task: Task, tokenizer, model_cfg: ModelConfig) -> list[tuple]:
    """(ids, P) per train-split example: its prompt's ids as the rollout encodes them, then the
    task's demonstration and EOS (``offline.sft.encode_example``); for a multi-turn task
    (ids, P, targets), ``encode_episode``. Raises ConfigError when the task writes no
    demonstrations."""
    rows = []
    for example in task.examples("train"):
        text = task.demonstration(example)
        if text is None:
            raise ConfigError(f"warm_start: task {task.name!r} writes no demonstrations to fit; set "
                              "warm_start.epochs=0, or run `tokrl sft` on your own pairs and start RL from its "
                              "output (model.name)")
        if isinstance(text, list):
            rows.append(encode_episode(task, tokenizer, example, text, model_cfg.chat_template))
        else:
            rows.append(encode_example(tokenizer, example["prompt"], text, model_cfg.chat_template))
    return rows


def encode_episode(task: EnvironmentTask, tokenizer, example: Example, turns: list[str], chat_template: bool
                   ) -> tuple[list[int], int, list[bool]]:
    """(ids, P, targets) of a multi-turn demonstration: the prompt (the environment's reset),
    then the policy's turns and the observations, alternating, built by the rollout's turn rule
    (``generation.turns``): each policy turn tokenized on its own, followed by EOS unless it
    ends with a stop string; each observation by ``ObservationFormat``. targets: True on the
    policy's ids only (the loss is on them), False on the environment's."""
    prompt = task.make(0).reset(example)
    ids = encode_prompt(tokenizer, format_prompt(tokenizer, prompt, chat_template))
    P, targets, fmt, ended_with_eos = len(ids), [], ObservationFormat(tokenizer, chat_template), True
    stops = tuple(getattr(task.environment, "stop", ()) or ())
    for k, text in enumerate(turns):
        if k % 2 == 0:                                   # the policy's turn
            piece = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            ended_with_eos = not text.endswith(stops) if stops else True
            piece += [tokenizer.eos_token_id] if ended_with_eos else []
        else:                                            # the environment's answer
            piece = fmt.ids(text, ended_with_eos)
        ids += piece
        targets += [k % 2 == 0] * len(piece)
    return ids, P, targets


def warm_start(model: nn.Module, tokenizer, rows: list[tuple], cfg: Config) -> dict[str, Any]:
    """Fit ``model``'s trainable parameters (the LoRA adapters with LoRA) to ``rows`` in place:
    the mean NLL per demonstration token, AdamW of its own, ``warm_start.epochs`` seeded
    passes (``offline.fit.run_epochs``). Leaves the model in eval mode.

    returns {"demonstrations", "epochs", "steps", "loss_first", "loss_last", "seconds"}.
    """
    w = cfg.warm_start
    fit_cfg = FitConfig(data="task", epochs=w.epochs, batch_size=w.batch_size, lr=w.lr,
                        max_grad_norm=cfg.optim.max_grad_norm, dtype=cfg.model.dtype, seed=cfg.train.seed)
    pad, losses = tokenizer.pad_token_id, []

    def batch_loss(batch: list[tuple]) -> tuple[Tensor, dict[str, float]]:
        nll, n = completion_nll(model, *collate(batch, pad), cfg.model.dtype)
        return nll / n.clamp(min=1.0), {}                     # mean over the batch's demonstration tokens

    t0 = time.perf_counter()
    steps, last = run_epochs(model, rows, batch_loss, fit_cfg, lambda m: losses.append(m["loss"]))
    return {"demonstrations": len(rows), "epochs": w.epochs, "steps": steps,
            "loss_first": losses[0] if losses else None, "loss_last": last,
            "seconds": round(time.perf_counter() - t0, 2)}
