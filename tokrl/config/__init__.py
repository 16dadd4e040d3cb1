"""One tree of nested dataclasses; YAML is its serialized form.

Every field carries its documentation beside it. ``load_config`` reads a YAML
recipe, applies dotted overrides (``optim.lr=1e-5``) and validates the result;
anything wrong raises ``ConfigError`` naming the key. The sections that belong to
one module are defined there, beside what they configure (``algo`` in
algorithms.py, ``kl`` in kl.py); the others are in ``config/sections.py``; the YAML
and type handling in ``config/yaml_io.py``. This module composes the tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tokrl.algorithms import AlgoConfig, resolve
from tokrl.config.sections import (
    DistConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    SamplingConfig,
    TaskConfig,
    TrainConfig,
    WarmStartConfig,
)
from tokrl.config.yaml_io import apply_override, from_dict, merge, parse_yaml, to_dict
from tokrl.errors import ConfigError
from tokrl.kl import KLConfig

__all__ = ["AlgoConfig", "Config", "ConfigError", "DistConfig", "KLConfig", "LogConfig", "ModelConfig", "OptimConfig",
           "RolloutConfig", "SamplingConfig", "TaskConfig", "TrainConfig", "WarmStartConfig", "apply_override", "from_dict", "load_config",
           "parse_yaml", "to_dict", "validate"]


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dist: DistConfig = field(default_factory=DistConfig)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The recipe at ``path`` (or the defaults) with ``overrides`` applied, validated."""
    data = to_dict(Config())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found; pass a YAML recipe such as configs/reinforce.yaml")
        try:
            loaded = parse_yaml(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (model:, task:, ...)")
        merge(data, loaded, "")
    for override in overrides:
        apply_override(data, override)
    cfg = from_dict(Config, data)
    validate(cfg)
    return cfg


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express. The algorithm's names are
    checked by resolving them (``algorithms.resolve``); the task's name when the task is built."""
    a, s, t = cfg.algo, cfg.sampling, cfg.train
    _check(cfg.model.dtype in ("float32", "bfloat16"),
           f"model.dtype: {cfg.model.dtype!r} is not float32 or bfloat16 (float16 is not supported on CPU)")
    resolve(a, cfg.kl, t.group_size)
    _check(0.0 <= a.gamma <= 1.0, "algo.gamma must lie in [0, 1]")
    _check(0.0 <= a.lam <= 1.0, "algo.lam must lie in [0, 1]")
    _check(a.epochs >= 1, "algo.epochs must be >= 1")
    _check(a.dual_clip is None or a.dual_clip > 1.0, "algo.dual_clip must be > 1 (or null)")
    k = cfg.kl
    _check(k.coef >= 0, "kl.coef must be >= 0")
    _check(k.target is None or (k.target > 0 and k.coef > 0),
           "kl.target needs kl.coef > 0 (the starting beta) and a positive target")
    _check(k.horizon > 0, "kl.horizon must be > 0")
    _check(s.max_new_tokens >= 1, "sampling.max_new_tokens must be >= 1")
    _check(s.temperature >= 0.0, "sampling.temperature must be >= 0 (0 means greedy)")
    _check(s.top_k >= 0, "sampling.top_k must be >= 0 (0 turns it off)")
    _check(0.0 < s.top_p <= 1.0, "sampling.top_p must lie in (0, 1]")
    _check(t.max_steps >= 0, "train.max_steps must be >= 0")
    _check(t.prompts_per_step >= 1, "train.prompts_per_step must be >= 1")
    _check(t.group_size >= 1, "train.group_size must be >= 1")
    _check(t.minibatch_size >= 0 and t.microbatch_size >= 0, "train.minibatch_size and train.microbatch_size must be >= 0")
    _check(cfg.optim.lr > 0, "optim.lr must be > 0")
    _check(cfg.model.lora_rank >= 0, "model.lora_rank must be >= 0 (0 turns LoRA off)")
    _check(cfg.log.wandb_mode in ("offline", "online"), "log.wandb_mode must be offline or online")
    _check(t.on_bad_reward in ("error", "skip"), "train.on_bad_reward must be error or skip")
    _check(t.max_bad_steps >= 1, "train.max_bad_steps must be >= 1")
    _check(not (t.compile and t.activation_checkpointing),
           "train.compile and train.activation_checkpointing cannot be combined: pick speed (compile) or memory")
    _check(not t.dynamic_sampling or t.group_size >= 2,
           "train.dynamic_sampling compares the samples of one prompt: set train.group_size >= 2")
    _check(t.max_resample >= 0, "train.max_resample must be >= 0")
    _check(t.checkpoint_every >= 0 and t.keep_checkpoints >= 1,
           "train.checkpoint_every must be >= 0 and train.keep_checkpoints >= 1")
    _check(t.output_dir.strip() != "", "train.output_dir must name a directory (e.g. runs/my-run)")
    _check(cfg.dist.strategy in ("ddp", "fsdp"), f"dist.strategy: {cfg.dist.strategy!r} is not ddp or fsdp")
    _check(cfg.task.name.strip() != "", "task.name must name a task (e.g. target_match)")
    _check(cfg.model.device in ("auto", "cpu", "cuda"), f"model.device: {cfg.model.device!r} is not auto, cpu or cuda")
    w = cfg.warm_start
    _check(w.epochs >= 0 and w.batch_size >= 1 and w.lr > 0,
           "warm_start needs epochs >= 0 (0: off), batch_size >= 1 and lr > 0")
    _check(not (w.epochs and cfg.kl.coef > 0),
           "warm_start with kl.coef > 0: the KL reference would be the model before the warm start; "
           "run `tokrl sft` first and start RL from its output (model.name), or set kl.coef=0")
    _check(not (w.epochs and cfg.dist.strategy == "fsdp"),
           "warm_start fits the whole policy on each process; with dist.strategy=fsdp run `tokrl sft` first "
           "and start RL from its output (model.name)")
    r = cfg.rollout
    _check(r.engine in ("tokrl", "vllm"), f"rollout.engine: {r.engine!r} is not tokrl or vllm")
    _check(r.vllm_memory > 0, "rollout.vllm_memory must be > 0 (GiB of KV cache for vLLM)")
    _check(r.is_cap >= 1.0, "rollout.is_cap must be >= 1 (the largest importance weight)")
