"""GPU check: tokrl's rollout and update on CUDA, on a model of SmolLM2-135M's shape.

Runs where nothing can be downloaded (the device machine): the model is built on the
spot with random weights (hidden 576, 30 layers, 9 query / 3 key-value heads,
vocabulary 49152) beside tokrl's character tokenizer, so the token ids it samples are
meaningless but the arithmetic is the real model's. It prints one JSON object:

- ``rollout``: tokens/s of tokrl's engine (and of vLLM, when it is installed) at
  batch 16 and 64, 64 new tokens each, no EOS, bf16 autocast;
- ``step``: seconds per RL step (rollout + update) of GRPO, 4 prompts x 4 samples x 64
  tokens, full fine-tune, bf16 autocast, the median of ``--steps`` steps after one warm-up.

    benchmarks/gpu_check.sh            # or: python benchmarks/gpu_check.py --steps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def smollm2_shaped(directory: Path) -> Path:
    """A random-initialised Llama of SmolLM2-135M's shape, saved with tokrl's tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokrl.models.tiny import make_tokenizer

    tokenizer = make_tokenizer()
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         rope_theta=100000.0, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def config(model_dir: Path, engine: str, out: Path):
    from tokrl.config import load_config

    return load_config(None, [
        f"model.name={model_dir}", "model.device=cuda", "model.dtype=bfloat16", f"rollout.engine={engine}",
        "rollout.vllm_memory=8", "task.name=target_match", "task.options={length: 8, alphabet: abcdefgh}",
        "sampling.max_new_tokens=64", "algo.estimator=grpo", "algo.policy_loss=ppo", "algo.entropy_coef=0",
        "optim.lr=1e-5", "train.prompts_per_step=4", "train.group_size=4", "train.eval_samples=4",
        f"train.output_dir={out}", "train.save_model=false", "log.report=false", "log.tensorboard=false"])


def rollout_speed(state, cfg, batch: int, repeats: int = 3) -> float:
    """Median tokens/s of ``batch`` sampled rows x 64 new tokens (EOS never stops a row)."""
    import torch

    from tokrl.config import SamplingConfig
    from tokrl.generation.prompts import encode_batch

    examples = state.task.examples("train")[:batch]
    ids, mask = encode_batch(state.tokenizer, examples, 1)
    sampling = SamplingConfig(max_new_tokens=64, temperature=1.0)
    rates = []
    for r in range(repeats + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = state.engine.generate(ids, mask, sampling, eos_id=-1, pad_id=state.tokenizer.pad_token_id,
                                    seeds=torch.arange(batch) + 1000 * r)
        torch.cuda.synchronize()
        if r:                                                     # the first call warms up
            rates.append(float(out["lengths"].sum()) / (time.perf_counter() - t0))
    return statistics.median(rates)


def step_time(state, cfg, steps: int) -> dict[str, float]:
    import torch

    from tokrl.training.loop import train_step

    train_step(state, cfg)                                        # warm-up
    times, rollouts = [], []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        metrics, _ = train_step(state, cfg)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        rollouts.append(metrics["time/rollout_s"])
    return {"step_s": statistics.median(times), "rollout_s": statistics.median(rollouts),
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed RL steps after one warm-up")
    args = parser.parse_args()
    import importlib.util

    import torch
    import transformers

    from tokrl.training.state import build_state

    if not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA GPU")
    report = {"benchmark": "gpu_check", "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "transformers": transformers.__version__, "rollout": {}, "step": {}}
    engines = ["tokrl"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = smollm2_shaped(Path(tmp) / "smollm2-shaped")
        for engine in engines:
            cfg = config(model_dir, engine, Path(tmp) / f"run-{engine}")
            state = build_state(cfg)
            report["rollout"][engine] = {f"batch_{b}": round(rollout_speed(state, cfg, b), 1) for b in (16, 64)}
            report["step"][engine] = {k: round(v, 3) for k, v in step_time(state, cfg, args.steps).items()}
            del state
            torch.cuda.empty_cache()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
