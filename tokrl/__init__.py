"""tokrl: fine-tune causal language models with token-level reinforcement learning.

The public names below load on first use, so ``import tokrl`` stays cheap (the CLI's
``--help`` does not pay for torch).
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "Config": "tokrl.config", "ConfigError": "tokrl.config", "load_config": "tokrl.config",
    "Rollout": "tokrl.types",
    "TokenEnv": "tokrl.env",
    "Task": "tokrl.tasks", "build_task": "tokrl.tasks",
    "rollout": "tokrl.rollout", "generate": "tokrl.rollout",
    "train": "tokrl.trainer", "build_state": "tokrl.trainer", "train_step": "tokrl.trainer",
    "evaluate": "tokrl.evaluate",
    "load_policy": "tokrl.models", "save_policy": "tokrl.models",
    "resolve_model": "tokrl.pretrained",
    "write_report": "tokrl.report",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'tokrl' has no attribute {name!r}")
