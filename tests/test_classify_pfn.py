"""The PFN row of the classification comparison (``pyrobayes compare --data X --y label``):
a checkpoint given by path (``--pfn-checkpoint``), the row on a small CSV (labels as
written, probabilities summing to 1, time per split), the stated mixture beyond the PFN's
trained rows and features, and the notes when it cannot run."""

import argparse
import csv
import json
import math

import pytest
import torch

from pyrobayes import ClassifyTabularConfig, run_classify_tabular
from pyrobayes.pfn import load_checkpoint
from pyrobayes.pfn.train import add_arguments
from pyrobayes.pfn.train import run as pfn_train

PFN_ROW = "PFN (bnn-tabular-classifier)"


@pytest.fixture(scope="module")
def tiny_pfn(tmp_path_factory) -> str:
    """A classification PFN trained here for 3 steps by ``pyrobayes pfn train``: up to 1024
    training rows, 4 features, 3 classes, d_model 16 (seconds on one thread)."""
    out = tmp_path_factory.mktemp("pfn") / "bnn-tabular-classifier"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--prior", "bnn-tabular-classifier", "--out", str(out), "--steps", "3",
         "--batch-size", "2", "--max-train", "1024", "--min-train", "1", "--num-queries", "8",
         "--d-model", "16", "--layers", "1", "--heads", "2", "--d-ff", "32",
         "--max-features", "4", "--max-classes", "3", "--no-progress"]
    )  # fmt: skip
    torch.manual_seed(0)
    assert pfn_train(args) == 0
    return str(out)


def _csv(path, n: int, d: int = 2, labels=("no", "yes"), seed: int = 0) -> str:
    """``n`` rows of ``d`` Gaussian features and a text label from the sign pattern of the
    first feature(s), every label present."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    k = len(labels)
    y = ((x[:, 0] > 0).long() + (x[:, -1] > 0.5).long()) % k
    y[:k] = torch.arange(k)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([f"f{j}" for j in range(d)] + ["kind"])
        for row, label in zip(x.tolist(), y.tolist()):
            w.writerow([f"{v:.5f}" for v in row] + [labels[label]])
    return str(path)


def _config(data: str, out, pfn: str, **kw) -> ClassifyTabularConfig:
    kw = {"methods": "logreg,pfn", "splits": 2, "no_progress": True, **kw}
    return ClassifyTabularConfig(data=data, y_col="kind", out=str(out), pfn_checkpoint=pfn, **kw)


def test_pfn_row_on_a_small_csv_labels_as_written(tiny_pfn, tmp_path):
    data = _csv(tmp_path / "toy.csv", n=60, labels=("cat", "dog", "emu"))
    res = run_classify_tabular(_config(data, tmp_path / "out", tiny_pfn))
    assert res["table"].methods == ("logistic regression", PFN_ROW)
    for table in res["split_tables"]:  # a score and a time on every split
        row = table.row(PFN_ROW)
        assert math.isfinite(row["nll"]) and row["time_s"] > 0
    for info in res["infos"]:  # within its trained range: one predict call on every row
        assert info["pfn"]["form"] == "full" and info["pfn"]["seconds"] > 0
    assert {p[PFN_ROW] for p in res["predictions"]} <= {"cat", "dog", "emu"}
    with open(res["files"]["predictions"]) as fh:
        assert {r[PFN_ROW] for r in csv.DictReader(fh)} <= {"cat", "dog", "emu"}
    payload = json.loads(res["files"]["json"].read_text())
    assert payload["config"]["pfn_checkpoint"] == tiny_pfn


def test_pfn_probabilities_sum_to_one_and_follow_the_classes(tiny_pfn):
    from pyrobayes.jobs.tabular_plan import pfn_subset_ppd

    pfn = load_checkpoint(tiny_pfn)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 2, generator=g)
    y = torch.tensor([0, 2] * 20)  # class 1 has no training row: it still gets a probability
    for n_rows, k in ((40, 1), (1100, 3)):
        xt, yt = x.repeat(n_rows // 40 + 1, 1)[:n_rows], y.repeat(n_rows // 40 + 1)[:n_rows]
        ppd = pfn_subset_ppd(pfn, xt, yt, x[:7], subsets=k, num_classes=3)
        assert ppd.probs.shape == (7, 3) and ppd.probs_per_draw.shape[0] == k
        assert torch.allclose(ppd.probs.sum(-1), torch.ones(7), atol=1e-5)
        assert (ppd.probs[:, 1] > 0).all()


def test_pfn_beyond_1024_training_rows_is_a_stated_mixture(tiny_pfn, tmp_path):
    data = _csv(tmp_path / "big.csv", n=1250, d=5)  # ~1125 training rows, 5 > 4 features
    cfg = _config(data, tmp_path / "out", tiny_pfn, methods="pfn", splits=1, pfn_subsets=3)
    res = run_classify_tabular(cfg)
    label = (
        "PFN (bnn-tabular-classifier, mixture of 3 random 1024-row contexts, 4 of 5 features each)"
    )
    assert res["table"].methods == (label,)
    note = next(n for n in res["notes"] if n.startswith("PFN: trained for at most 1024 rows"))
    n_train = 1250 - len(res["predictions"])  # every row not tested trains
    assert f"here {n_train} x 5" in note and n_train > 1024 and "an approximation" in note
    info = res["infos"][0]["pfn"]
    assert info["form"] == "subsets" and info["contexts"] == 3 and info["seconds"] > 0
    assert {p[label] for p in res["predictions"]} <= {"no", "yes"}
    assert math.isfinite(res["table"].row(label)["nll"])


def test_pfn_row_says_why_it_is_empty(tiny_pfn, tmp_path):
    four = _csv(tmp_path / "four.csv", n=60, labels=("a", "b", "c", "d"))
    res = run_classify_tabular(_config(four, tmp_path / "o1", tiny_pfn))
    # 4 classes, the PFN knows 2..3: its row is empty and a note says why
    assert res["table"].row(PFN_ROW)["nll"] is None
    assert all(PFN_ROW not in t.methods for t in res["split_tables"])
    assert any("trained on 2..3 classes" in n and "4 classes" in n for n in res["notes"])
    two = _csv(tmp_path / "two.csv", n=40)
    with pytest.raises(FileNotFoundError, match="no-such-file"):
        run_classify_tabular(_config(two, tmp_path / "o2", str(tmp_path / "no-such-file")))


def test_cli_flag_points_the_job_at_a_checkpoint(tiny_pfn, tmp_path, capsys):
    from pyrobayes.jobs.cli import main

    data = _csv(tmp_path / "toy.csv", n=40)
    argv = ["compare", "--data", data, "--y", "kind", "--methods", "pfn", "--splits", "2",
            "--pfn-checkpoint", tiny_pfn, "--no-progress", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    assert PFN_ROW in capsys.readouterr().out
