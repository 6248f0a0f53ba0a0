"""Old import paths of modules that moved, kept working with a :class:`DeprecationWarning`.

The applications moved under :mod:`pyrobayes.jobs` and the NUTS reference under
:mod:`pyrobayes.infer.nuts`, and ``pyrobayes.model`` became :mod:`pyrobayes.bayesian_model`
(issue 19: a layout that shows the layers, no ``model.py`` next to ``models/``). Instead of one shim
file per old module, one finder on :data:`sys.meta_path` maps an old dotted name (or a
submodule of an old package) to its new one: ``import pyrobayes.tabular_job`` warns, imports
:mod:`pyrobayes.jobs.tabular_regression` and binds the *same* module object under the old
name, so ``pyrobayes.tabular_job.run_tabular is pyrobayes.jobs.tabular_regression.run_tabular``
and pickles or checkpoints that name an old path still load. ``python -m pyrobayes.cli``
still runs (the loader hands :mod:`runpy` the new module's code).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import CodeType, ModuleType

# old dotted name -> new one; a package's submodules follow it (longest old prefix wins)
MOVED = {
    "pyrobayes.tabular_job": "pyrobayes.jobs.tabular_regression",
    "pyrobayes.tabular_plan": "pyrobayes.jobs.tabular_plan",
    "pyrobayes.svi_recipe": "pyrobayes.jobs.tabular_svi",
    "pyrobayes.classify_tabular": "pyrobayes.jobs.tabular_classification",
    "pyrobayes.compare_job": "pyrobayes.jobs.demo_1d",
    "pyrobayes.classify": "pyrobayes.jobs.classify",
    "pyrobayes.cli": "pyrobayes.jobs.cli",
    "pyrobayes.baselines": "pyrobayes.jobs.baselines",
    "pyrobayes.reference": "pyrobayes.infer.nuts.sampler",
    "pyrobayes.infer.potential": "pyrobayes.infer.nuts.potential",
    "pyrobayes.infer.jax_potential": "pyrobayes.infer.nuts.jax_potential",
    # renamed so that ``model.py`` no longer sits next to the ``models/`` package
    "pyrobayes.model": "pyrobayes.bayesian_model",
}


def new_name(old: str) -> str | None:
    """The current dotted name of the module once called ``old``; ``None`` if it did not move."""
    for prefix in sorted(MOVED, key=len, reverse=True):
        if old == prefix or old.startswith(prefix + "."):
            return MOVED[prefix] + old[len(prefix) :]
    return None


class _MovedLoader(importlib.abc.Loader):
    """Loads an old name as the new module object itself (no second copy)."""

    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{self.old} moved to {self.new}; import it from there "
            "(the old path will be removed in a later release)",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.new)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system stamped the alias spec on the shared module: give it back its own
        module.__spec__ = self._spec

    def get_code(self, fullname: str) -> CodeType | None:  # for ``python -m <old name>``
        spec = importlib.util.find_spec(self.new)
        return spec.loader.get_code(self.new)  # type: ignore[union-attr]


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None):  # noqa: ANN001
        new = new_name(fullname) if fullname.startswith("pyrobayes.") else None
        if new is None:
            return None
        spec = importlib.util.find_spec(new)
        if spec is None:
            return None
        return importlib.machinery.ModuleSpec(
            fullname,
            _MovedLoader(fullname, new),
            is_package=spec.submodule_search_locations is not None,
        )


def install() -> None:
    """Put the finder first on :data:`sys.meta_path` (once): before the path finder, which
    would otherwise import a moved package's submodule a second time under its old name."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
