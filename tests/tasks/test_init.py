"""The task registry: build_task by name and options."""

from __future__ import annotations

import pytest

from tokrl.tasks import TASKS, TargetMatch, build_task


def test_build_task_passes_options(tokenizer):
    task = build_task("target_match", tokenizer, length=3, transform="reverse", num_train=8, num_test=2)
    assert isinstance(task, TargetMatch) and task.name == "target_match"
    assert task.length == 3 and task.transform == "reverse"
    assert len(task.examples("train")) == 8


def test_every_registered_task_is_named_by_its_key():
    assert all(cls.name == name for name, cls in TASKS.items())


def test_build_task_unknown_name(tokenizer):
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*target_match"):
        build_task("nope", tokenizer)


def test_build_task_unknown_option_names_it(tokenizer):
    with pytest.raises(ValueError, match="lenght"):
        build_task("target_match", tokenizer, lenght=3)
