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
