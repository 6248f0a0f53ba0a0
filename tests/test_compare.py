"""Comparison tables: contents, markdown, JSON round trip, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from pyrobayes.compare import ComparisonRow, ComparisonTable, compare_ppds, stopwatch
from pyrobayes.metrics import classification_metrics, kl_divergence_grid, regression_metrics
from pyrobayes.ppd import CategoricalPPD, NormalMixturePPD, normal_ppd


def _regression_ppds():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(40, generator=g, dtype=torch.float64)
    ppds = {
        "NUTS": normal_ppd(torch.zeros(40, dtype=torch.float64), 1.0),
        "SVI (MOPED)": NormalMixturePPD(
            0.3 * torch.randn(25, 40, generator=g, dtype=torch.float64), 0.9
        ),
        "PFN": normal_ppd(torch.zeros(40, dtype=torch.float64), 0.4),
    }
    return ppds, y


def test_regression_table_contents():
    ppds, y = _regression_ppds()
    table = compare_ppds(
        ppds, y, times={"NUTS": 30.0, "SVI (MOPED)": 2.0, "PFN": 0.01}, reference="NUTS"
    )
    assert table.kind == "regression" and table.num_points == 40 and table.reference == "NUTS"
    assert table.methods == ("NUTS", "SVI (MOPED)", "PFN")
    assert table.columns == (
        "nll",
        "crps",
        "mae",
        "rmse",
        "coverage_50",
        "coverage_90",
        "coverage_95",
        "kl_to_reference",
        "time_s",
    )
    # each cell is the metric of that PPD
    for name, ppd in ppds.items():
        row = table.row(name)
        expected = regression_metrics(ppd, y)
        for key, value in expected.items():
            assert row[key] == pytest.approx(value)
    assert table.row("PFN")["time_s"] == 0.01
    assert table.row("NUTS")["kl_to_reference"] == 0.0
    assert table.row("PFN")["kl_to_reference"] == pytest.approx(
        kl_divergence_grid(ppds["NUTS"], ppds["PFN"], reduction="mean")
    )
    # KL(N(0,1) || N(0,0.4^2)) = log(0.4) + 1/(2*0.16) - 1/2
    assert table.row("PFN")["kl_to_reference"] == pytest.approx(
        torch.log(torch.tensor(0.4)).item() + 1 / 0.32 - 0.5, rel=1e-4
    )
    assert table.best("nll") != "PFN"  # the over-confident PPD loses on NLL
    assert table.best("time_s") == "PFN"
    assert table.best("kl_to_reference") == "SVI (MOPED)"  # the reference itself does not count


def test_markdown_has_a_row_per_method():
    ppds, y = _regression_ppds()
    table = compare_ppds(ppds, y, times={"PFN": 0.5}, reference="NUTS")
    md = table.to_markdown()
    lines = md.splitlines()
    assert len(lines) == 2 + len(ppds)
    assert lines[0].startswith("| method | NLL | CRPS")
    body = lines[2:]
    assert body[0].startswith("| NUTS (ref) |")
    assert body[1].startswith("| SVI (MOPED) |") and body[2].startswith("| PFN |")
    assert all(line.count("|") == len(table.columns) + 2 for line in lines)
    assert "—" in body[0]  # no time given for NUTS
    assert "**" in md and "**" not in table.to_markdown(highlight=False)


def test_json_round_trip():
    ppds, y = _regression_ppds()
    table = compare_ppds(ppds, y, times={"NUTS": 30.0}, reference="NUTS")
    text = table.to_json()
    data = json.loads(text)
    assert data["format"] == "pyrobayes.comparison/1"
    assert [r["method"] for r in data["rows"]] == list(ppds)
    assert data["rows"][1]["time_s"] is None
    again = ComparisonTable.from_json(text)
    assert again == table
    assert ComparisonTable.from_dict(table.to_dict()) == table
    with pytest.raises(ValueError, match="not a pyrobayes comparison table"):
        ComparisonTable.from_dict({"format": "something/else"})


def test_missing_and_infinite_values_stay_strict_json():
    table = ComparisonTable(
        "regression",
        ("nll", "time_s"),
        (ComparisonRow("a", (float("inf"), None)), ComparisonRow("b", (1.0, 2.0))),
    )
    text = table.to_json()
    assert "Infinity" not in text and "NaN" not in text
    data = json.loads(text)
    assert data["rows"][0]["nll"] == "inf" and data["rows"][0]["time_s"] is None
    assert ComparisonTable.from_json(text) == table
    assert table.best("nll") == "b"
    assert "| a | inf | — |" in table.to_markdown()


def test_classification_table_with_ood():
    labels = torch.tensor([0, 1, 1, 0])
    sure = CategoricalPPD(torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.7, 0.3]]]))
    flat = CategoricalPPD(torch.full((1, 4, 2), 0.5))
    ood_sure = CategoricalPPD(torch.tensor([[[0.5, 0.5], [0.55, 0.45]]]))
    table = compare_ppds(
        {"sure": sure, "flat": flat},
        labels,
        ood_ppds={"sure": ood_sure},
        reference="sure",
        times={"flat": 1.0},
    )
    assert table.kind == "classification"
    assert table.columns == (
        "accuracy",
        "nll",
        "ece",
        "brier",
        "auroc_entropy",
        "auroc_mutual_information",
        "kl_to_reference",
        "time_s",
    )
    expected = classification_metrics(sure, labels, ood_ppd=ood_sure)
    for key, value in expected.items():
        assert table.row("sure")[key] == pytest.approx(value)
    assert table.row("sure")["auroc_entropy"] == 1.0
    assert table.row("flat")["auroc_entropy"] is None  # no OOD data for this method
    # exact categorical KL(sure || flat) = mean_i sum_c p log(p / 0.5)
    p = sure.probs
    assert table.row("flat")["kl_to_reference"] == pytest.approx(
        float((p * (p / 0.5).log()).sum(-1).mean()), rel=1e-6
    )
    assert table.best("accuracy") == "sure"
    assert len(table.to_markdown().splitlines()) == 4


def test_clear_errors():
    ppds, y = _regression_ppds()
    cat = CategoricalPPD(torch.full((1, 40, 3), 1 / 3))
    with pytest.raises(ValueError, match="different kinds.*'cat': classification"):
        compare_ppds({**ppds, "cat": cat}, y)
    with pytest.raises(ValueError, match=r"batch shapes differ.*'short': \(39,\)"):
        compare_ppds({**ppds, "short": normal_ppd(torch.zeros(39), 1.0)}, y)
    with pytest.raises(ValueError, match="reference 'GP' is not one of the methods"):
        compare_ppds(ppds, y, reference="GP")
    with pytest.raises(ValueError, match=r"times given for unknown methods \['SVI'\]"):
        compare_ppds(ppds, y, times={"SVI": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        compare_ppds(ppds, y, times={"PFN": -1.0})
    with pytest.raises(ValueError, match="only supported for classification"):
        compare_ppds(ppds, y, ood_ppds={"PFN": ppds["PFN"]})
    with pytest.raises(ValueError, match="non-empty mapping"):
        compare_ppds({}, y)
    with pytest.raises(ValueError, match="not a PPD"):
        compare_ppds({"x": torch.zeros(40)}, y)
    with pytest.raises(ValueError, match="shape"):
        compare_ppds(ppds, y[:10])
    with pytest.raises(ValueError, match="classes"):
        compare_ppds({"a": cat, "b": CategoricalPPD(torch.full((1, 40, 2), 0.5))}, torch.zeros(40))


def test_stopwatch_measures_a_block():
    with stopwatch() as sw:
        torch.randn(1000).sum()
    assert 0 <= sw.seconds < 5
