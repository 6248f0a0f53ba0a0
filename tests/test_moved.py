"""The old module paths (before the jobs/ and infer/nuts/ layout) still import the same
objects, with a DeprecationWarning naming the new path."""

import subprocess
import sys
import warnings

import pytest

import pyrobayes
from pyrobayes._moved import MOVED, new_name


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_is_new_module_and_warns(old):
    new = MOVED[old]
    sys.modules.pop(old, None)  # a fresh import, so the finder runs (and warns) again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        __import__(old)
    module = sys.modules[old]
    assert module is sys.modules[new]  # the same module object: no second copy of its state
    assert module.__name__ == module.__spec__.name == new  # the alias left its spec alone
    msgs = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(old in m and new in m for m in msgs), msgs


def test_same_objects_from_old_paths():
    with pytest.warns(DeprecationWarning, match="pyrobayes.jobs.tabular_regression"):
        sys.modules.pop("pyrobayes.tabular_job", None)
        from pyrobayes.tabular_job import TabularConfig, run_tabular
    from pyrobayes.jobs.tabular_regression import TabularConfig as New
    from pyrobayes.jobs.tabular_regression import run_tabular as new_run

    assert TabularConfig is New and run_tabular is new_run is pyrobayes.run_tabular
    # a moved package's submodule resolves through it, not as a second copy
    from pyrobayes.classify.digits import run_digits

    from pyrobayes.jobs.classify.digits import run_digits as new_digits

    assert run_digits is new_digits


def test_old_model_path_same_class_and_pickles():
    """``pyrobayes.model`` (renamed ``pyrobayes.bayesian_model``, away from ``models/``) gives
    the same classes, and a pickle naming the old module path loads as the new class."""
    import pickle

    from pyrobayes.bayesian_model import BayesianModel, to_bayesian

    sys.modules.pop("pyrobayes.model", None)
    with pytest.warns(DeprecationWarning, match="pyrobayes.bayesian_model"):
        from pyrobayes.model import BayesianModel as Old
        from pyrobayes.model import to_bayesian as old_to_bayesian
    assert Old is BayesianModel is pyrobayes.BayesianModel
    assert old_to_bayesian is to_bayesian is pyrobayes.to_bayesian
    # a pickle written before the rename names the class by its old module
    blob = pickle.dumps(BayesianModel, protocol=2)
    old_blob = blob.replace(b"pyrobayes.bayesian_model", b"pyrobayes.model")
    assert old_blob != blob and pickle.loads(old_blob) is BayesianModel
    assert new_name("pyrobayes.models.tabular") is None  # the models/ package did not move


def test_new_name_mapping():
    assert new_name("pyrobayes.classify.cli") == "pyrobayes.jobs.classify.cli"
    assert new_name("pyrobayes.classify.text") == "pyrobayes.jobs.classify.text"
    assert new_name("pyrobayes.compare") is None  # the PPD scoring stays in the core
    assert new_name("pyrobayes.classifyx") is None


def test_public_api_unchanged():
    for name in pyrobayes.__all__:
        assert hasattr(pyrobayes, name), name


def test_python_m_old_cli_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "pyrobayes.cli", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "usage: pyrobayes" in proc.stdout, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "pyrobayes", "compare", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "usage: pyrobayes compare" in proc.stdout, proc.stderr
