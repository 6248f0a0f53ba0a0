"""The runnable examples in the docstrings are part of the test suite."""

import doctest
import importlib

import pytest

MODULES = [
    "pyrobayes.ppd",
    "pyrobayes.priors",
    "pyrobayes.convert",
    "pyrobayes.likelihoods",
    "pyrobayes.model",
    "pyrobayes.guides.moped",
    "pyrobayes.guides.local_reparam",
    "pyrobayes.infer.fit",
    "pyrobayes.infer.steppers",
    "pyrobayes.distributed",
    "pyrobayes.infer.fit_checkpoint",
    "pyrobayes.progress",
    "pyrobayes.infer.predictive",
    "pyrobayes.models.mlp",
    "pyrobayes.models.hf",
    "pyrobayes.data.images",
    "pyrobayes.data.text",
    "pyrobayes.data.regression",
    "pyrobayes.data.tabular",
    "pyrobayes.tabular_job",
    "pyrobayes.metrics",
    "pyrobayes.compare",
    "pyrobayes.plotting",
    "pyrobayes.reference",
    "pyrobayes.gp",
    "pyrobayes.pfn",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no runnable example"
    assert result.failed == 0
