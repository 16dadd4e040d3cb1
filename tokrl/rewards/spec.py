"""Rewards from a recipe: each reward is a small mapping.

    {"name": "exact_match", "weight": 1.0, "column": "answer"}   a built-in, with its options
    {"fn": "my_rewards:score", "weight": 0.5}                     a user function by import path
    {"fn": "path/to/file.py:score"}                               ... or from a Python file
    {"reward_model": "runs/rm", "batch_size": 32}                 a learned reward model directory
    {"reward_model": "runs/prm", "level": "step", "step_separator": "\n"}
                                                                  a process reward model: step scores, dense

Keys every kind accepts:

- ``weight`` (1.0): factor in the weighted sum
- ``label``: the name the values are logged under (default: the built-in's name,
  the function's name, or ``reward_model``)
- ``shaped`` (false): pay a sequence-level reward densely by potential-based
  shaping, scoring every prefix (``tokrl.rewards.shaping``)

For ``reward_model``: ``level`` (sequence, or step for a process reward model, with
``step_separator`` (default: the one it was trained with) and ``differences`` (pay
p_k − p_{k−1}, so the return telescopes to the last step's score)), ``batch_size``,
``dtype``. For ``fn``: ``level`` (sequence or token), ``conversational`` (TRL's message
format), ``factory`` (a mapping: ``fn`` is a factory, called once with these keyword
arguments, and what it returns is the reward) and any other key is passed to the
function as a keyword argument on every call. For a built-in, the other keys are the factory's options.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokrl.rewards.base import LEVELS, SEQUENCE, TOKEN, Reward, RewardError
from tokrl.rewards.builtin import BUILTIN
from tokrl.rewards.shaping import shaped

KINDS = ("name", "fn", "reward_model")
COMMON = ("weight", "label", "shaped")


def load_callable(path: str, what: str = "reward fn") -> Callable:
    """The object named by ``module:attr`` (dotted attributes allowed) or ``file.py:attr``.

    A module is looked up on sys.path and then in the current directory. Raises
    RewardError saying whether the module or the name is missing (``what``: how the
    message names the setting, e.g. "task.name").
    """
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise RewardError(f"{what} {path!r} is not of the form module:function (e.g. my_rewards:score)")
    module_name, attr = path.split(":")
    if module_name.endswith(".py"):
        file = Path(module_name).expanduser()
        if not file.is_file():
            raise RewardError(f"{what} {path!r}: file {file} not found")
        spec = importlib.util.spec_from_file_location(f"tokrl_user_rewards.{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise RewardError(f"{what} {path!r}: importing {file} failed: {type(e).__name__}: {e}") from e
    else:
        module = _import(module_name, path, what)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise RewardError(f"{what} {path!r}: module {module_name} has no {attr!r}; "
                              f"callables there: {', '.join(names) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardError(f"{what} {path!r} is a {type(obj).__name__}, not a function")
    return obj


def _import(module_name: str, path: str, what: str = "reward fn"):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        # not the module itself but something it imports: say so
        if missing and missing != module_name and not module_name.startswith(missing + "."):
            raise RewardError(f"{what} {path!r}: module {module_name} imports {missing!r}, "
                              f"which is not installed") from e
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:   # the console script does not put . on sys.path
            sys.path.insert(0, cwd)
            try:
                return _import(module_name, path, what)
            finally:
                sys.path.remove(cwd)
        raise RewardError(f"{what} {path!r}: no module named {module_name!r} (looked on sys.path and in "
                          f"{cwd})") from None
    except Exception as e:
        raise RewardError(f"{what} {path!r}: importing {module_name} failed: {type(e).__name__}: {e}") from e


def _check_options(factory: Callable, options: dict[str, Any], what: str, given: tuple[str, ...] = ()) -> None:
    """Unknown or missing options of ``factory`` as a RewardError (``given``: filled in by tokrl)."""
    params = inspect.signature(factory).parameters
    valid = [p for p in params if params[p].kind in (params[p].POSITIONAL_OR_KEYWORD, params[p].KEYWORD_ONLY)
             and p not in given]
    for key in options:
        if key not in valid:
            raise RewardError(f"unknown option {key!r} for reward {what}; valid: "
                              f"{', '.join([*valid, *COMMON])}")
    for p in valid:
        if params[p].default is params[p].empty and p not in options:
            raise RewardError(f"reward {what} needs the option {p!r}")


def build_reward(spec: dict[str, Any], tokenizer=None) -> Reward:
    """One Reward from its recipe mapping (``tokenizer``: the policy's, for shaping)."""
    if not isinstance(spec, dict):
        raise RewardError(f"a reward is a mapping such as {{name: exact_match}}, got {spec!r}")
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        raise RewardError(f"reward {spec!r} must have exactly one of name (a built-in), fn (module:function) "
                          f"or reward_model (a directory)")
    options = {k: v for k, v in spec.items() if k not in (*KINDS, *COMMON)}
    weight = spec.get("weight", 1.0)
    kind = kinds[0]
    if kind == "name":
        name = spec["name"]
        if name not in BUILTIN:
            raise RewardError(f"unknown reward {name!r}; built-in rewards: {', '.join(sorted(BUILTIN))} "
                              f"(or use fn: module:function, or reward_model: a directory)")
        given = ("tokenizer",) if "tokenizer" in inspect.signature(BUILTIN[name]).parameters else ()
        _check_options(BUILTIN[name], options, name, given)
        if given and tokenizer is None:
            raise RewardError(f"reward {name}: it needs the policy's tokenizer")
        try:
            fn = BUILTIN[name](**options, **({"tokenizer": tokenizer} if given else {}))
        except (TypeError, ValueError) as e:
            raise RewardError(f"reward {name}: {e}") from None
        reward = Reward(name=spec.get("label", name), fn=fn, weight=weight,
                        level=getattr(fn, "level", SEQUENCE), columns=getattr(fn, "columns", ()))
    elif kind == "fn":
        level = options.pop("level", SEQUENCE)
        conversational = options.pop("conversational", False)
        if level not in LEVELS:
            raise RewardError(f"reward fn {spec['fn']!r}: level must be sequence or token, got {level!r}")
        fn = load_callable(spec["fn"])
        label = spec.get("label", getattr(fn, "__name__", None) or spec["fn"].split(":")[1])
        if "factory" in options:
            fn = _from_factory(fn, options.pop("factory"), spec["fn"])
        if options:
            fn = _bind(fn, options, spec["fn"])
        reward = Reward(name=label, fn=fn, weight=weight, level=level, conversational=bool(conversational))
    else:
        reward = _reward_model(spec, options, weight, tokenizer)
    if spec.get("shaped", False):
        if tokenizer is None:
            raise RewardError(f"reward {reward.name!r}: shaping needs the policy's tokenizer")
        reward = shaped(reward, tokenizer)
    return reward


def _reward_model(spec: dict[str, Any], options: dict[str, Any], weight: float, tokenizer) -> Reward:
    """``{reward_model: DIR}``: sequence level (one score per completion), or with ``level: step``
    a process reward model's step scores as a token-level reward (``tokrl.rewards.steps``)."""
    level = options.pop("level", "sequence")
    label = spec.get("label", "reward_model")
    if level == "sequence":
        from tokrl.rewards.model import RewardModelReward

        _check_options(RewardModelReward, options, "reward_model", given=("directory",))
        return Reward(name=label, fn=RewardModelReward(spec["reward_model"], **options), weight=weight)
    if level != "step":
        raise RewardError(f"reward_model {spec['reward_model']}: level must be sequence or step, got {level!r}")
    if tokenizer is None:
        raise RewardError(f"reward {label!r}: a step-level reward model needs the policy's tokenizer")
    from tokrl.rewards.steps import StepRewardModelReward

    _check_options(StepRewardModelReward, options, "reward_model (level: step)", given=("directory", "tokenizer"))
    fn = StepRewardModelReward(spec["reward_model"], tokenizer, **options)
    return Reward(name=label, fn=fn, weight=weight, level=TOKEN)


def _from_factory(factory: Callable, kwargs: Any, path: str) -> Callable:
    """``{fn: module:factory, factory: {keyword arguments}}``: call the factory once; what it
    returns is the reward (e.g. TRL's ``get_soft_overlong_punishment``)."""
    if not isinstance(kwargs, dict):
        raise RewardError(f"reward fn {path!r}: factory must be a mapping of keyword arguments, got {kwargs!r}")
    try:
        fn = factory(**kwargs)
    except Exception as e:
        raise RewardError(f"reward fn {path!r}: calling the factory failed: {type(e).__name__}: {e}") from None
    if not callable(fn):
        raise RewardError(f"reward fn {path!r}: the factory returned a {type(fn).__name__}, not a reward function")
    return fn


def _bind(fn: Callable, options: dict[str, Any], path: str) -> Callable:
    """``fn`` with ``options`` as keyword arguments of every call."""
    import functools

    try:
        inspect.signature(fn).bind_partial(**options)
    except TypeError:
        raise RewardError(f"reward fn {path!r} takes no option(s) {', '.join(sorted(options))}") from None
    except ValueError:   # no signature to check against
        pass
    bound = functools.partial(fn, **options)
    # a name to log under; no __wrapped__, so the signature seen is the partial's own
    bound.__name__ = getattr(fn, "__name__", path.split(":")[1])
    return bound


def build_rewards(specs: list[dict[str, Any]], tokenizer=None) -> list[Reward]:
    """Every reward of a recipe; their logged names must differ."""
    if not isinstance(specs, list) or not specs:
        raise RewardError("rewards must be a non-empty list, e.g. [{name: exact_match}]")
    rewards = [build_reward(spec, tokenizer) for spec in specs]
    seen: set[str] = set()
    for r in rewards:
        if r.name in seen:
            raise RewardError(f"two rewards are logged as {r.name!r}; give one of them a label")
        seen.add(r.name)
    return rewards
