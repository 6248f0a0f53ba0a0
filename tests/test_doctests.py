"""The runnable examples in the docstrings are part of the test suite: every public module
(found by walking the package, see ``conftest.public_modules``) must have one, and all pass."""

import doctest
import importlib

import pytest
from conftest import public_modules

MODULES = public_modules()


def test_walk_finds_the_subpackages():
    # A broken walk (e.g. a subpackage whose import fails silently) would shrink the list.
    for name in ("pyrobayes.pfn.model", "pyrobayes.infer.fit", "pyrobayes.models.mlp"):
        assert name in MODULES
    assert not any(m.split(".")[-1].startswith("_") for m in MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no runnable example"
    assert result.failed == 0
