"""The classification comparison on labelled tables: labels, splits, metrics, the job."""

import csv
import json
import math

import pytest
import torch

from pyrobayes.data.labelled import encode_labels, load_labelled, looks_like_labels
from pyrobayes.jobs.cli import main
from pyrobayes.jobs.tabular_classification import (
    ClassifyTabularConfig,
    check_training_classes,
    detect_task,
    fit_mlp_classifier,
    pooled_calibration,
    run_classify_tabular,
    stratified_splits,
)
from pyrobayes.metrics import brier_score, expected_calibration_error, roc_auc
from pyrobayes.options import Task
from pyrobayes.pfn.pretrained import PLANNED
from pyrobayes.ppd import CategoricalPPD

# the quickest settings that still run every row (NUTS: 2 x 4 chains of a few draws)
QUICK = [
    "--splits", "2", "--mlp-steps", "30", "--ensemble-steps", "10", "--svi-steps", "10",
    "--num-samples", "10", "--nuts-warmup", "5", "--nuts-samples", "5",
    "--nuts-max-tree-depth", "3", "--no-progress",
]  # fmt: skip


def _toy_csv(path, labels=("no", "yes"), n=40, seed=0, label_of=None):
    """Two features; the label is the sign of the first (plus noise), written as given."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    lab = (x[:, 0] + 0.3 * torch.randn(n, generator=g) > 0).long()
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "b", "kind"])
        for i in range(n):
            value = label_of(i, int(lab[i])) if label_of else labels[int(lab[i])]
            w.writerow([f"{float(x[i, 0]):.4f}", f"{float(x[i, 1]):.4f}", value])
    return str(path)


# ----------------------------------------------------------------- labels


def test_string_and_integer_labels_keep_their_values_and_order():
    idx, classes = encode_labels(["dog", "cat", "emu", "cat"])
    assert classes == ("cat", "dog", "emu") and idx.tolist() == [1, 0, 2, 0]
    idx, classes = encode_labels([10, 2, 2, 10, 7])
    assert classes == (2, 7, 10) and all(type(c) is int for c in classes)
    assert idx.tolist() == [2, 0, 0, 2, 1]


def test_the_auto_rule_for_a_label_column():
    assert looks_like_labels(["a", "b"]) and looks_like_labels([0, 1, 0, 2])
    assert looks_like_labels([1.0, 2.0, 1.0])  # whole numbers written as floats
    assert not looks_like_labels(list(range(11)))  # 11 distinct whole numbers: a count
    assert not looks_like_labels([0.5, 1.0, 0.5])  # not whole: a real target
    assert looks_like_labels(["a", None, "b"])  # missing cells do not decide


def test_bad_label_columns_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"one class only \('x'\)"):
        encode_labels(["x", "x", "x"], column="kind")
    with pytest.raises(ValueError, match=r"2 missing or NaN label\(s\) \(rows 1, 3"):
        encode_labels(["a", float("nan"), "b", ""], column="kind")
    path = tmp_path / "nan.csv"
    path.write_text("a,kind\n1,x\n2,\n3,y\n4,x\n5,y\n")
    with pytest.raises(ValueError, match=r"'kind' has 1 missing or NaN label\(s\) \(rows 1,"):
        load_labelled(str(path), y_col="kind")


def test_a_class_absent_from_a_splits_training_rows_is_named():
    with pytest.raises(ValueError, match=r"split 2: class\(es\) 'c' have no training rows"):
        check_training_classes(torch.tensor([0, 1, 1, 0]), ("a", "b", "c"), split=2)
    check_training_classes(torch.tensor([0, 1, 2]), ("a", "b", "c"))  # all there: fine


def test_one_class_in_a_csv_fails_from_the_cli_with_one_line(tmp_path, capsys):
    path = tmp_path / "one.csv"
    path.write_text("a,kind\n" + "".join(f"{i},same\n" for i in range(12)))
    code = main(["compare", "--data", str(path), "--y", "kind", *QUICK, "--out", str(tmp_path)])
    assert code == 2
    assert "holds one class only ('same')" in capsys.readouterr().err


def test_detect_task_reads_the_column_and_obeys_task(tmp_path):
    strings = _toy_csv(tmp_path / "s.csv")
    ints = _toy_csv(tmp_path / "i.csv", labels=(0, 1))
    real = tmp_path / "r.csv"
    real.write_text("a,y\n" + "".join(f"{i},{0.37 * i}\n" for i in range(12)))
    assert detect_task(strings, "kind") is Task.CLASSIFICATION
    assert detect_task(ints, "kind") is Task.CLASSIFICATION
    assert detect_task(str(real), "y") is Task.REGRESSION
    assert detect_task(ints, "kind", "regression") is Task.REGRESSION
    assert detect_task("wine") is Task.CLASSIFICATION
    assert detect_task("diabetes") is Task.REGRESSION


def test_builtin_sets_are_the_documented_tables():
    for name, shape, classes in (
        ("breast_cancer", (569, 30), ("benign", "malignant")),
        ("wine", (178, 13), ("class_0", "class_1", "class_2")),
        ("iris", (150, 4), ("setosa", "versicolor", "virginica")),
    ):
        t = load_labelled(name)
        assert tuple(t.x.shape) == shape and t.classes == classes
    assert torch.bincount(load_labelled("iris").y).tolist() == [50, 50, 50]


# ----------------------------------------------------------------- splits


def test_stratified_splits_use_every_row_keep_class_shares_and_are_seeded():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 1)
    splits = stratified_splits(y, 4, 0.1, seed=3)
    for tr, te in splits:
        assert sorted(torch.cat([tr, te]).tolist()) == list(range(len(y)))
        assert torch.bincount(y[te], minlength=3).tolist() == [5, 3, 0]  # the single row trains
        check_training_classes(y[tr], ("a", "b", "c"))
    assert not torch.equal(splits[0][1], splits[1][1])
    assert torch.equal(stratified_splits(y, 4, 0.1, seed=3)[2][1], splits[2][1])


# ----------------------------------------------------------------- metrics


def _four_points():
    # top-class confidences 0.95, 0.85, 0.55, 0.65; right, wrong, right, wrong
    p = torch.tensor([[0.95, 0.05], [0.85, 0.15], [0.55, 0.45], [0.65, 0.35]], dtype=torch.float64)
    return CategoricalPPD(p[None]), torch.tensor([0, 1, 0, 1])


def test_ece_and_brier_match_the_hand_computed_values():
    ppd, y = _four_points()
    # 10 bins: each point alone in its bin, gaps |1-.95|, |0-.85|, |1-.55|, |0-.65|
    assert expected_calibration_error(ppd, y, n_bins=10) == pytest.approx(2.0 / 4, abs=1e-12)
    # sum_c (p_c - 1{y=c})^2: 0.005, 1.445, 0.405, 0.845
    assert brier_score(ppd, y) == pytest.approx(2.7 / 4, abs=1e-12)
    # one bin: |mean accuracy 0.5 - mean confidence 0.75|
    assert expected_calibration_error(ppd, y, n_bins=1) == pytest.approx(0.25, abs=1e-12)


def test_pooled_ece_is_one_estimate_over_all_splits_test_rows():
    # split 1: confident and right; split 2: calibrated at 0.75 (3 of 4 right)
    p1, y1 = torch.tensor([[0.99, 0.01]] * 2), torch.tensor([0, 0])
    p2, y2 = torch.tensor([[0.75, 0.25]] * 4), torch.tensor([0, 0, 0, 1])
    out = pooled_calibration({"m": [(p1, y1), (p2, y2)]}, n_bins=10)["m"]
    all_p, all_y = torch.cat([p1, p2]), torch.cat([y1, y2])
    assert out["ece"] == pytest.approx(
        expected_calibration_error(CategoricalPPD(all_p[None]), all_y, n_bins=10), abs=1e-7
    )  # float32 probabilities there, float64 here
    # bins: 0.99 (2 rows, gap 0.01) and 0.75 (4 rows, gap 0): 0.02 / 6
    assert out["ece"] == pytest.approx(0.02 / 6, abs=1e-7)
    assert out["nll"] == pytest.approx(
        -(2 * math.log(0.99) + 3 * math.log(0.75) + math.log(0.25)) / 6, abs=1e-7
    )
    assert (out["accuracy"], out["rows"]) == (pytest.approx(5 / 6), 6)


def test_roc_auc_hand_computed_and_against_sklearn():
    from sklearn.metrics import roc_auc_score

    ppd, y = _four_points()
    assert roc_auc(ppd, y) == 0.5  # p(1) = .15, .35 for positives; .05, .45 for negatives
    g = torch.Generator().manual_seed(0)
    for c in (2, 3, 5):
        probs = torch.softmax(2 * torch.randn(80, c, generator=g), -1).double()
        labels = torch.arange(80) % c
        ours = roc_auc(CategoricalPPD(probs[None]), labels)
        theirs = (
            roc_auc_score(labels.numpy(), probs[:, 1].numpy())
            if c == 2
            else roc_auc_score(labels.numpy(), probs.numpy(), multi_class="ovr")
        )
        assert ours == pytest.approx(theirs, abs=1e-12)
    # a class absent from the labels is left out of the macro average (sklearn refuses)
    probs = torch.softmax(torch.randn(30, 3, generator=g), -1)
    labels = torch.arange(30) % 2
    per = [roc_auc(CategoricalPPD(torch.stack([1 - q, q], -1)[None]), labels)
           for q in (probs[:, 0], probs[:, 1])]  # fmt: skip
    expected = (1 - per[0] + per[1]) / 2  # class 0 is the "negative" of its binary view
    assert roc_auc(CategoricalPPD(probs[None]), labels) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(roc_auc(CategoricalPPD(probs[None]), torch.zeros(30, dtype=torch.long)))


# ----------------------------------------------------------------- the job


def test_mlp_classifier_is_early_stopped_on_its_own_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()  # xor: needs the hidden layers
    net, best = fit_mlp_classifier(x, y, 2, max_steps=600, seed=0)
    assert 0 < best <= 600
    xt = torch.randn(500, 2, generator=g)
    acc = float((net(xt).argmax(-1) == (xt[:, 0] * xt[:, 1] > 0)).float().mean())
    assert acc > 0.85


def test_cli_on_a_small_csv_every_row_and_string_labels_back(tmp_path, capsys):
    path = _toy_csv(tmp_path / "toy.csv", n=40)
    out = tmp_path / "out"
    assert main(["compare", "--data", path, "--y", "kind", *QUICK, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for row in ("logistic regression", "MLP", "deep ensemble", "SVI (MOPED)", "NUTS (ref)",
                "GP classifier (Laplace)", "ROC-AUC", "ECE", "Brier"):  # fmt: skip
        assert row in printed
    if "bnn-tabular-classifier" in PLANNED:  # the PFN row says why it is empty
        assert "no classification PFN" in printed
    else:  # shipped: its row runs on the CSV's 36 training rows
        assert "PFN (bnn-tabular-classifier)" in printed
    payload = json.loads((out / "compare.json").read_text())
    assert payload["classes"] == ["no", "yes"] and payload["table"]["kind"] == "classification"
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 4  # 2 splits x (10% of each class: 2 + 2 rows)
    assert {r["label"] for r in rows} <= {"no", "yes"}
    assert {r["NUTS"] for r in rows} <= {"no", "yes"}
    with open(out / "probabilities.csv") as fh:
        probs = list(csv.DictReader(fh))
    nuts = [r for r in probs if r["method"] == "NUTS"]
    assert [(r["split"], r["row"]) for r in nuts] == [(r["split"], r["row"]) for r in rows]
    for r, pred in zip(nuts, rows):  # the predicted label is the most probable class
        p_no, p_yes = float(r["p(no)"]), float(r["p(yes)"])
        assert p_no + p_yes == pytest.approx(1.0, abs=1e-5)
        assert pred["NUTS"] == ("yes" if p_yes > p_no else "no")
    assert (out / "compare.png").stat().st_size > 10_000


def test_python_api_gives_labels_as_written(tmp_path):
    path = _toy_csv(tmp_path / "ints.csv", label_of=lambda i, k: 7 if k else 3)
    cfg = ClassifyTabularConfig(
        data=path, y_col="kind", splits=2, methods="logreg,mlp", mlp_steps=30,
        out=str(tmp_path / "o"), no_progress=True,
    )  # fmt: skip
    res = run_classify_tabular(cfg)
    assert res["classes"] == (3, 7)
    labels = {type(r[m]) for r in res["predictions"] for m in ("label", "MLP")}
    assert labels == {int}
    assert res["table"].methods == ("logistic regression", "MLP")
    pooled = res["pooled"]["MLP"]  # every split's test rows, as predictions.csv lists them
    assert pooled["rows"] == len(res["predictions"])
    right = [r["MLP"] == r["label"] for r in res["predictions"]]
    assert pooled["accuracy"] == pytest.approx(sum(right) / len(right), abs=1e-12)
    acc = res["table"].row("logistic regression")["accuracy"]
    assert acc >= 0.75  # a linear boundary with a little noise
    strings = _toy_csv(tmp_path / "s.csv")
    cfg = ClassifyTabularConfig(data=strings, y_col="kind", splits=1, methods="logreg",
                                out=str(tmp_path / "p"), no_progress=True)  # fmt: skip
    preds = run_classify_tabular(cfg)["predictions"]
    assert all(isinstance(r["label"], str) and isinstance(r["logistic regression"], str)
               for r in preds)  # fmt: skip


def test_config_errors_before_any_work():
    with pytest.raises(ValueError, match="unknown classification method 'dropout'"):
        ClassifyTabularConfig(data="iris", methods="mlp,dropout")
    with pytest.raises(ValueError, match="no method left"):
        ClassifyTabularConfig(data="iris", methods="nuts", no_nuts=True)
    with pytest.raises(ValueError, match="ece-bins must be >= 1"):
        ClassifyTabularConfig(data="iris", ece_bins=0)
