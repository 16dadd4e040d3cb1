"""Shared fixtures: one tiny random model per session, and a private model cache.

No test writes to ~/.cache: ``TOKRL_CACHE`` points at a session temp directory
for the whole run (set before any test, restored after the last one).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tokrl.models.tiny import make_tiny_model


@pytest.fixture(scope="session", autouse=True)
def _private_tokrl_cache(tmp_path_factory):
    """$TOKRL_CACHE -> a session temp dir (built-in models are built there, never in ~)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKRL_CACHE", str(tmp_path_factory.mktemp("tokrl-cache")))
        yield


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two
    threads spin against each other (20x slower measured): tests run on one. A test of
    the real model sets its own count; it is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + character tokenizer saved as a Hugging Face model directory."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")
