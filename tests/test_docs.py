"""The documentation site builds in strict mode (a broken cross-reference, a missing page or a
docstring warning fails), and its API reference covers every public name."""

import importlib
import inspect
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
pytest.importorskip("mkdocstrings_handlers.python")

# Packages and modules whose __all__ the API reference must cover.
PUBLIC = [
    "pyrobayes",
    "pyrobayes.infer",
    "pyrobayes.guides",
    "pyrobayes.pfn",
    "pyrobayes.data",
    "pyrobayes.models",
    "pyrobayes.convert",
    "pyrobayes.priors",
    "pyrobayes.likelihoods",
    "pyrobayes.bayesian_model",
    "pyrobayes.ppd",
    "pyrobayes.persist",
    "pyrobayes.progress",
    "pyrobayes.metrics",
    "pyrobayes.compare",
    "pyrobayes.plotting",
    "pyrobayes.infer.nuts",
    "pyrobayes.infer.nuts.sampler",
    "pyrobayes.infer.nuts.jax_potential",
    "pyrobayes.diagnostics",
    "pyrobayes.gp",
    "pyrobayes.jobs.classify",
    "pyrobayes.jobs.demo_1d",
    "pyrobayes.jobs.cli",
    "pyrobayes.distributed",
    "pyrobayes.options",
    "pyrobayes.jobs.tabular_regression",
    "pyrobayes.jobs.tabular_plan",
    "pyrobayes.jobs.tabular_classification",
    "pyrobayes.data.labelled",
    "pyrobayes.jobs.baselines",
    "pyrobayes.jobs.tabular_svi",
    "pyrobayes.models.tabular",
    "pyrobayes.models.train",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"strict docs build failed:\n{proc.stderr[-5000:]}"
    return out


def _inventory(site: Path) -> set[str]:
    raw = (site / "objects.inv").read_bytes()
    body = zlib.decompress(raw.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines()}


def test_every_public_name_is_in_the_api_reference(site):
    documented = _inventory(site)
    missing = []
    for mod_name in PUBLIC:
        mod = importlib.import_module(mod_name)
        for name in getattr(mod, "__all__", []):
            if name.startswith("__"):
                continue
            obj = getattr(mod, name)
            ids = {f"{mod_name}.{name}"}
            if inspect.isclass(obj) or inspect.isfunction(obj):
                ids.add(f"{obj.__module__}.{obj.__qualname__}")
            if not ids & documented:
                missing.append(f"{mod_name}.{name}")
    assert not missing, f"public names without an API entry: {missing}"


def test_pages_carry_notebooks_and_benchmarks(site):
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    for nb in notebooks:
        page = site / "notebooks" / nb.stem / "index.html"
        assert page.exists(), f"{nb.name} is not rendered"
        assert "data:image/png;base64" in page.read_text(), f"{nb.name} rendered without plots"
    bench = (site / "benchmarks" / "index.html").read_text()
    first_section = next(
        line[3:].strip()
        for line in (ROOT / "benchmarks" / "RESULTS.md").read_text().splitlines()
        if line.startswith("## ")
    )
    assert first_section in bench
