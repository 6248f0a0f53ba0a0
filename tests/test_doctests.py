"""The runnable examples in the docstrings are part of the test suite: every public module
(found by walking the package, see ``conftest.public_modules``) must have one, and all pass."""

import doctest
import importlib
import re
import sys
import types

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


def _names_without_example() -> list[str]:
    """Public functions and classes (``__all__`` of the module that defines them) whose own
    docstring has no ``>>>`` example."""
    import inspect

    missing = []
    for m in MODULES:
        mod = importlib.import_module(m)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name, None)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if obj.__module__ != m:  # re-exports are checked where they are defined
                continue
            if ">>>" not in (inspect.getdoc(obj) or ""):
                missing.append(f"{m}.{name}")
    return missing


# Names still without their own example; this set may only shrink (issue 12).
NO_EXAMPLE_YET: set[str] = set()


def test_every_public_function_and_class_has_an_example():
    missing = set(_names_without_example())
    assert missing <= NO_EXAMPLE_YET, (
        f"public names without an example: {sorted(missing - NO_EXAMPLE_YET)}"
    )
    assert not NO_EXAMPLE_YET - missing, (
        f"these have examples now, drop them: {sorted(NO_EXAMPLE_YET - missing)}"
    )


def _all_modules() -> list[str]:
    """Every module with docstrings: the public ones and the private ones / the CLI."""
    import pkgutil

    import pyrobayes

    walked = [i.name for i in pkgutil.walk_packages(pyrobayes.__path__, "pyrobayes.")]
    return sorted({"pyrobayes", *walked} - {m for m in walked if ".benchmarks" in m})


PRIVATE_WITH_EXAMPLES = ["pyrobayes._pyro_compat", "pyrobayes.data._io"]


@pytest.mark.parametrize("name", PRIVATE_WITH_EXAMPLES)
def test_examples_of_private_modules_and_the_cli_run_too(name):
    assert name not in MODULES
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# A float literal in an expected output: 0.1, -3.25, 1e-05, 0.23369...
_FLOAT = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _significant_digits(literal: str) -> int:
    mantissa = re.sub(r"[eE].*", "", literal).lstrip("+-").replace(".", "")
    return len(mantissa.lstrip("0").rstrip("0"))


def long_float_outputs(modules: list[str]) -> list[str]:
    """Examples whose expected output prints a float to more than 6 significant digits:
    they compare the last bits of a computation (a float32 round trip, a sum's order),
    which differ between CPUs and library versions; round them (``round(x, 4)``,
    ``f"{x:.4f}"``) or compare with a tolerance (``torch.allclose``)."""
    found = []
    for name in modules:
        for test in doctest.DocTestFinder().find(importlib.import_module(name)):
            for ex in test.examples:
                long = [f for f in _FLOAT.findall(ex.want) if _significant_digits(f) > 6]
                if long:
                    found.append(f"{test.name}: {ex.source.strip()!r} -> {long}")
    return found


def test_the_float_scan_catches_an_unrounded_float(monkeypatch):
    mod = types.ModuleType("fake")
    mod.__doc__ = (
        ">>> 0.1 + 0.2\n0.30000000000000004\n>>> round(0.1 + 0.2, 4), 1e-05\n(0.3, 1e-05)\n"
    )
    monkeypatch.setitem(sys.modules, "fake", mod)
    found = long_float_outputs(["fake"])
    assert len(found) == 1 and "0.30000000000000004" in found[0]


def test_no_example_depends_on_the_last_digits_of_a_float():
    found = long_float_outputs(_all_modules())
    assert not found, "round these (or use a tolerance):\n" + "\n".join(found)
