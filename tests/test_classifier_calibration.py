"""benchmarks/classifier_calibration.py re-scores a finished classification run: its pooled
ECE must be the job's own, and the PFN's difference to the best baseline that of those."""

import importlib.util
import sys
from pathlib import Path

import pytest

from pyrobayes.jobs.tabular_classification import ClassifyTabularConfig, run_classify_tabular


@pytest.fixture(scope="module")
def calib():
    path = Path(__file__).parent.parent / "benchmarks" / "classifier_calibration.py"
    spec = importlib.util.spec_from_file_location("classifier_calibration", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["classifier_calibration"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_rescoring_a_run_gives_the_jobs_pooled_ece(calib, tmp_path):
    cfg = ClassifyTabularConfig(
        data="iris", splits=2, methods="logreg,mlp,pfn", mlp_steps=40,
        out=str(tmp_path / "run"), no_progress=True,
    )  # fmt: skip
    res = run_classify_tabular(cfg)
    out = calib.score([tmp_path / "run"], bins=cfg.ece_bins, bootstrap=50, seed=0)
    assert out["rows"] == 30 and out["splits"] == 2
    for m, v in res["pooled"].items():
        assert out["pooled"][m] == pytest.approx(v["ece"], abs=1e-5)  # csv keeps 6 digits
        assert out["per_split"][m] == pytest.approx(res["table"].row(m)["ece"], abs=1e-12)
    pfn, best = out["pfn"], out["best_baseline"]
    assert pfn.startswith("PFN") and best in ("logistic regression", "MLP")
    assert out["pooled"][best] == min(out["pooled"][m] for m in ("logistic regression", "MLP"))
    assert out["diff"] == pytest.approx(out["pooled"][pfn] - out["pooled"][best], abs=1e-12)
    assert 0 < out["diff_se"] < 0.2 and 0 <= out["p_not_worse"] <= 1
    assert "| iris |" in calib.markdown([out], cfg.ece_bins, 50)
    # a second run of the same splits with another method merges into the first
    more = ClassifyTabularConfig(
        data="iris", splits=2, methods="logreg,gp", out=str(tmp_path / "more"), no_progress=True
    )
    gp = run_classify_tabular(more)["pooled"]["GP classifier (Laplace)"]["ece"]
    both = calib.score([tmp_path / "run", tmp_path / "more"], cfg.ece_bins, 50, 0)
    assert both["pooled"]["GP classifier (Laplace)"] == pytest.approx(gp, abs=1e-5)
    assert both["pooled"]["MLP"] == out["pooled"]["MLP"]
    other = ClassifyTabularConfig(
        data="iris", splits=2, seed=1, methods="logreg", out=str(tmp_path / "o"), no_progress=True
    )
    run_classify_tabular(other)
    with pytest.raises(ValueError, match="not the same data and splits"):
        calib.score([tmp_path / "run", tmp_path / "o"], cfg.ece_bins, 50, 0)


def test_a_folder_without_probabilities_is_named(calib, tmp_path):
    with pytest.raises(FileNotFoundError, match="probabilities.csv not found"):
        calib.load_run(tmp_path)
