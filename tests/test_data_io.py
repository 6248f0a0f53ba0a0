import pytest

from pyrobayes.data._io import load_any


def test_zero_byte_csv_is_a_clear_error(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("")
    with pytest.raises(ValueError, match=r"train\.csv.*empty"):
        load_any(str(f))
    with pytest.raises(ValueError, match=r"train\.csv.*empty"):
        load_any("csv", data_files={"train": str(f)})


def test_header_only_csv_names_the_empty_split(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("x,y\n")
    with pytest.raises(ValueError, match=r"'train'.*empty"):
        load_any(str(f))
