"""tokrl: fine-tune causal language models with token-level reinforcement learning.

The public names below load on first use, so ``import tokrl`` stays cheap (no torch
until a name that needs it is used). No module or package of tokrl shares a public
name, so ``tokrl.train`` is always the function, never a module.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "Config": "tokrl.config", "ConfigError": "tokrl.errors", "load_config": "tokrl.config",
    "Rollout": "tokrl.types",
    "TokenEnv": "tokrl.env", "Environment": "tokrl.env",
    "Task": "tokrl.tasks", "build_task": "tokrl.tasks",
    "rollout": "tokrl.generation.batch", "generate": "tokrl.generation.engine",
    "train": "tokrl.training.loop", "build_state": "tokrl.training.state", "train_step": "tokrl.training.loop",
    "evaluate": "tokrl.training.evaluate",
    "load_policy": "tokrl.models.load", "save_policy": "tokrl.models.load",
    "resolve_model": "tokrl.models.pretrained",
    "write_report": "tokrl.runs.report",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'tokrl' has no attribute {name!r}")
