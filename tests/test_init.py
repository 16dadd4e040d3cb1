"""The curated public names of the package."""

import subprocess
import sys

import pytest

import tokrl


def test_every_public_name_resolves():
    for name in tokrl.__all__:
        assert getattr(tokrl, name) is not None
    with pytest.raises(AttributeError):
        tokrl.not_a_thing


def test_import_is_cheap():
    code = "import sys, tokrl; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_no_module_or_package_shares_a_public_name():
    # importing tokrl.<name> would replace the public function tokrl.<name> with the module
    from pathlib import Path

    root = Path(tokrl.__file__).parent
    clashes = [n for n in tokrl.__all__ if (root / n).is_dir() or (root / f"{n}.py").is_file()]
    assert not clashes


def test_public_functions_stay_functions_after_their_modules_are_imported():
    import importlib

    for name in ("train", "rollout", "evaluate", "generate"):
        importlib.import_module(tokrl._PUBLIC[name])
        assert callable(getattr(tokrl, name)), name
