import warnings

import datasets
import numpy as np
import pandas as pd
import pytest

from pyrobayes.data import load_csv_regression, load_tabular
from pyrobayes.data._io import load_any, read_csv


def test_zero_byte_csv_is_a_clear_error(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("")
    with pytest.raises(ValueError, match=r"train\.csv.*empty"):
        load_any(str(f))
    with pytest.raises(ValueError, match=r"train\.csv.*empty"):
        load_any("csv", data_files={"train": str(f)})


def test_header_only_csv_names_the_file_and_says_it_has_no_data_rows(tmp_path):
    f = tmp_path / "only_header.csv"
    f.write_text("x,y\n")
    expected = r"only_header\.csv.* has a header but no data rows"
    with pytest.raises(ValueError, match=expected) as err:
        load_any(str(f))
    assert "split(s)" not in str(err.value)  # not datasets' wording
    with pytest.raises(ValueError, match=expected):
        load_any("csv", data_files={"train": str(f)})
    with pytest.raises(ValueError, match=expected) as err:
        read_csv(str(f))
    assert "could not be parsed" not in str(err.value)
    with pytest.raises(ValueError, match=expected):
        load_tabular(str(f), "all", "y")
    with pytest.raises(ValueError, match=expected):
        load_csv_regression(str(f), "x", "y")


def test_reading_a_csv_prints_no_progress_and_restores_the_switch(tmp_path, capfd):
    f = tmp_path / "fresh.csv"  # a new file: datasets generates its split (no cache hit)
    f.write_text("a,y\n1,2\n2,3\n3,5\n4,4\n")
    before = datasets.are_progress_bars_disabled()
    capfd.readouterr()
    assert read_csv(str(f)).num_rows == 4
    out, err = capfd.readouterr()
    assert "Generating" not in out + err and "examples" not in out + err
    assert datasets.are_progress_bars_disabled() == before
    # also restored when the read fails
    bad = tmp_path / "header.csv"
    bad.write_text("a,y\n")
    with pytest.raises(ValueError):
        read_csv(str(bad))
    assert datasets.are_progress_bars_disabled() == before
    assert "Generating" not in "".join(capfd.readouterr())


def _table(n=12, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "y": rng.normal(size=n)})


def test_a_pandas_index_column_is_left_out_and_said_so(tmp_path):
    path = tmp_path / "with_index.csv"
    _table().to_csv(path)  # header ",a,b,y", first column 0..n-1
    assert path.read_text().startswith(",a,b,y\n")
    with pytest.warns(UserWarning, match=r"with_index\.csv.*first column.*row index.*left out"):
        t = load_tabular(str(path), "all", "y")
    assert t.feature_names == ("a", "b")
    np.testing.assert_allclose(t.x.numpy(), _table()[["a", "b"]].to_numpy())


def test_r_row_names_and_shuffled_indices_are_indices_too(tmp_path):
    # R's write.csv: header `"",...` and row names "1".."n"; a shuffled pandas frame keeps
    # its (permuted) index: both unique, both an index.
    r = tmp_path / "r.csv"
    rows = "\n".join(f'"{i + 1}",{v.a},{v.b},{v.y}' for i, v in enumerate(_table().itertuples()))
    r.write_text('"","a","b","y"\n' + rows + "\n")
    shuffled = tmp_path / "shuffled.csv"
    _table().sample(frac=1.0, random_state=0).to_csv(shuffled)
    for path in (r, shuffled):
        with pytest.warns(UserWarning, match="row index"):
            assert load_tabular(str(path), "all", "y").feature_names == ("a", "b")


def test_an_unnamed_first_column_that_is_not_an_index_is_refused(tmp_path):
    path = tmp_path / "noname.csv"
    path.write_text(",a,y\n1.5,1,2\n1.5,2,3\n0.2,3,5\n0.7,4,4\n")
    with pytest.raises(ValueError, match=r"noname\.csv.*first column has no name.*not a row index"):
        load_tabular(str(path), "all", "y")


def test_named_columns_are_never_dropped(tmp_path):
    path = tmp_path / "named.csv"
    _table().to_csv(path, index_label="id")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_tabular(str(path), "all", "y").feature_names == ("id", "a", "b")
