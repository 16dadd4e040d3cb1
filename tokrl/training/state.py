"""What carries from one step to the next, and how a run's parts are built from its config."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tokrl import kl
from tokrl.advantages import MovingAverage
from tokrl.algorithms import Recipe, resolve
from tokrl.config import Config, to_dict
from tokrl.errors import ConfigError
from tokrl.generation.engine import Engine, TokrlEngine
from tokrl.models.checkpointing import decoder_layers
from tokrl.models.forward import device_of
from tokrl.models.heads import ValueHead
from tokrl.models.load import load_policy
from tokrl.models.reference import Reference
from tokrl.runs.health import Limits, Tracker
from tokrl.tasks import EnvironmentTask, PromptSampler, Task, build_task
from tokrl.training import distributed
from tokrl.training.buffer import ExperienceBuffer
from tokrl.training.update import Learner


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """Everything a run carries from step to step; a checkpoint saves the parts that change.

    The loop hands each stage the parts it uses (``training.loop.train_step``); no stage
    takes the whole state.
    """

    learner: Learner
    """the policy, its value head and their optimizer: what the update changes"""
    engine: Engine
    """samples the completions (tokrl's engine on the policy itself, or vLLM, synced after each update)"""
    tokenizer: Any
    task: Task
    recipe: Recipe
    """the algorithm, resolved once from the config"""
    sampler: PromptSampler
    """draws each step's prompts"""
    buffer: ExperienceBuffer
    """this process's rows of the current step"""
    baseline: MovingAverage
    """the ema baseline of reinforce"""
    reward_avg: MovingAverage
    """the moving average of the mean reward that train.target_reward stops at"""
    shuffle_generator: torch.Generator
    """deals the update's minibatches"""
    kl_coef: kl.FixedKL | kl.AdaptiveKL
    """beta, fixed or adaptive"""
    reference: Reference | None = None
    """the frozen reference (None with beta 0)"""
    step: int = 0
    bad_steps: int = 0
    """consecutive updates skipped for a non-finite loss or gradient"""
    health: Tracker = field(default_factory=Tracker)
    """what the console's health warnings remember (``runs.health``)"""


def build_state(cfg: Config) -> TrainState:
    """Load the model and the task and build every part of a run at step 0."""
    seed_everything(cfg.train.seed)
    recipe = resolve(cfg.algo, cfg.kl, cfg.train.group_size)
    model, tokenizer = load_policy(cfg.model)
    model.eval()   # dropout off for good: rollout and update must see the same policy
    task = build_task(cfg.task.name, tokenizer, **cfg.task.options)
    head = ValueHead(model.config.hidden_size).to(device_of(model)) if recipe.critic else None
    if cfg.train.activation_checkpointing:
        decoder_layers(model)        # a model without checkpointable layers fails here, not after a rollout
    # the reference is the frozen initial policy; with beta 0 it is never built or run
    reference = Reference(model) if recipe.reference else None
    distributed.check(cfg, distributed.world_size())
    # before the optimizer: FSDP replaces the parameters with their shards
    wrapped_model, wrapped_head = distributed.parallelize(
        model, head, reference.model if reference is not None else None, cfg.dist.strategy)
    if cfg.train.compile:
        wrapped_model = compiled(model)
    params = [p for p in model.parameters() if p.requires_grad] + (list(head.parameters()) if head else [])
    o = cfg.optim
    # fused: one kernel over all parameters, ~5x faster than the per-tensor loop on CPU
    # (benchmarks/hotspots.py). It cannot mix FSDP's sharded parameters with plain ones.
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                                  fused=not distributed.is_sharded(model))
    t = cfg.train
    return TrainState(
        learner=Learner(model, head, optimizer, wrapped_model, wrapped_head),
        engine=build_engine(cfg, model, tokenizer, task),
        tokenizer=tokenizer, task=task,
        recipe=recipe, sampler=PromptSampler(task.examples("train"), t.seed),
        buffer=ExperienceBuffer(capacity=t.prompts_per_step * t.group_size),
        baseline=MovingAverage(cfg.algo.ema_decay), reward_avg=MovingAverage(t.reward_ema),
        shuffle_generator=torch.Generator().manual_seed(t.seed + 2),
        kl_coef=kl.controller(cfg.kl), reference=reference, health=Tracker(Limits.of(to_dict(cfg))),
    )


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` compiled for the update's forward pass (``train.compile``): dynamic shapes, so
    that a step's new prompt and completion lengths reuse the graph; a failing compilation
    falls back to eager with a warning rather than stopping the run."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    print("tokrl: train.compile: the first update compiles the forward pass (minutes on a 2-core CPU)",
          file=sys.stderr, flush=True)
    return torch.compile(model, dynamic=True)


def build_engine(cfg: Config, model, tokenizer, task: Task) -> Engine:
    """The engine ``rollout.engine`` names, for ``model`` (loaded from ``cfg.model``), holding its
    weights; the loop syncs it after every update and after a checkpoint load. A vLLM engine
    is checked against the largest batch the run sends it (a training step's rows on this
    process, or an evaluation's) with the longest prompt of the task."""
    if cfg.rollout.engine == "tokrl":
        return TokrlEngine(model, cfg.model.dtype)
    from tokrl.generation.prompts import longest_prompt
    from tokrl.generation.vllm_engine import VLLMEngine
    from tokrl.models.pretrained import resolve_model
    from tokrl.training.evaluate import EVAL_BATCH

    if distributed.is_sharded(model):
        raise ConfigError("rollout.engine=vllm pushes whole weights after each update; with dist.strategy=fsdp "
                          "they are sharded: use dist.strategy=ddp or rollout.engine=tokrl")
    t = cfg.train
    examples = task.examples("train") + task.examples("test")[: t.eval_samples]
    rows = max(t.prompts_per_step * t.group_size // distributed.world_size(), min(t.eval_samples, EVAL_BATCH))
    prompt_tokens = longest_prompt(tokenizer, examples, cfg.model.chat_template)
    if isinstance(task, EnvironmentTask):    # an episode holds max_episode_tokens after its prompt
        prompt_tokens += max(task.max_episode_tokens - cfg.sampling.max_new_tokens, 0)
    engine = VLLMEngine(resolve_model(cfg.model.name, cfg.model.cache_dir), cfg, rows=rows,
                        prompt_tokens=prompt_tokens)
    engine.sync(model)        # a vLLM engine shared in the process may hold another run's weights
    return engine
