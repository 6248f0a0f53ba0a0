"""Built-in data and the `datasets` loading paths (local files in the Hub formats; no network)."""

import collections
import io
import json
import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pyrobayes.data import (
    DATA_DIR,
    GLUE_TASKS,
    DataUnavailableError,
    image_ood,
    load_csv_regression,
    load_digits,
    load_glue,
    load_mnist,
    load_ood_sentences,
    load_sentiment,
    load_text_classification,
    regression_from_prior,
    to_tensors,
    tokenize,
)

# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_split_sizes_scaling_and_stratification(digits):
    sk = pytest.importorskip("sklearn.datasets").load_digits()
    x_tr, y_tr = to_tensors(digits["train"])
    x_te, y_te = to_tensors(digits["test"])
    assert x_tr.shape == (1200, 64) and x_te.shape == (597, 64)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert (
        float(torch.cat([x_tr, x_te]).min()) == 0.0 and float(torch.cat([x_tr, x_te]).max()) == 1.0
    )
    # Stratified: each class's share of the training split is its share of the data,
    # up to the rounding of one row.
    full = np.bincount(sk.target, minlength=10)
    train = np.bincount(y_tr.numpy(), minlength=10)
    assert np.all(np.abs(train - 1200 * full / full.sum()) < 1.0 + 1e-9)
    # The two splits partition the data set exactly (as a multiset of labelled images).
    rows = collections.Counter(
        tuple(r) + (t,) for r, t in zip((sk.data / 16).round(6).tolist(), sk.target)
    )
    ours = collections.Counter(
        tuple(r) + (t,)
        for r, t in zip(
            torch.cat([x_tr, x_te]).double().numpy().round(6).tolist(),
            torch.cat([y_tr, y_te]).tolist(),
        )
    )
    assert rows == ours


def test_digits_split_is_fixed(digits):
    again = load_digits()
    assert again["test"]["label"][:] == digits["test"]["label"][:]
    other = load_digits(seed=1)
    assert other["test"]["label"][:] != digits["test"]["label"][:]
    with pytest.raises(ValueError, match="n_train"):
        load_digits(n_train=1797)


def test_to_tensors_names_missing_column(digits):
    with pytest.raises(ValueError, match=r"'image'.*columns \['pixels', 'label'\]"):
        to_tensors(digits["train"], x_column="image")


def test_image_ood_sets():
    x = torch.rand(7, 64)
    flipped = image_ood(x, "flip")
    assert torch.equal(image_ood(flipped, "flip"), x)
    assert torch.equal(flipped.reshape(7, 8, 8)[:, 0], x.reshape(7, 8, 8)[:, -1])
    t = image_ood(x, "transpose")
    assert torch.equal(t.reshape(7, 8, 8), x.reshape(7, 8, 8).transpose(1, 2))
    noise = image_ood(x, "noise", seed=3)
    assert noise.shape == x.shape and 0 <= float(noise.min()) and float(noise.max()) <= 1
    assert torch.equal(noise, image_ood(x, "noise", seed=3))
    with pytest.raises(ValueError, match="unknown OOD kind .*; valid: flip, transpose, noise"):
        image_ood(x, "rotate")
    with pytest.raises(ValueError, match=r"\[N, 64\]"):
        image_ood(torch.rand(3, 28 * 28), "flip")


# ---------------------------------------------------------------- MNIST format


def _mnist_like(n: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(n)], rng.integers(
        0, 10, n
    ).tolist()


def _write_hf_parquet(path, imgs, labels):
    # Exactly how the Hub stores MNIST: an Image feature (PNG bytes) and a ClassLabel.
    feats = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a) for a in imgs], "label": labels}, features=feats
    ).to_parquet(str(path))


def test_load_mnist_parquet_files_and_folder(tmp_path):
    tr_imgs, tr_lab = _mnist_like(6, 0)
    te_imgs, te_lab = _mnist_like(4, 1)
    _write_hf_parquet(tmp_path / "train.parquet", tr_imgs, tr_lab)
    _write_hf_parquet(tmp_path / "test.parquet", te_imgs, te_lab)
    files = {"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")}
    for dd in (load_mnist("parquet", data_files=files), load_mnist(str(tmp_path))):
        assert set(dd) == {"train", "test"}
        x, y = to_tensors(dd["train"])
        assert x.shape == (6, 784) and y.tolist() == tr_lab
        expected = torch.tensor(
            np.stack([a.reshape(-1) for a in tr_imgs]) / 255.0, dtype=torch.float32
        )
        assert torch.allclose(x, expected)
        assert to_tensors(dd["test"])[1].tolist() == te_lab
    small = load_mnist("parquet", data_files=files, max_per_split=2)
    assert small["train"].num_rows == 2 and small["test"].num_rows == 2


def test_load_mnist_plain_parquet_without_hf_metadata(tmp_path):
    imgs, labels = _mnist_like(3, 2)
    pngs = []
    for a in imgs:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        pngs.append({"bytes": buf.getvalue(), "path": None})
    pq.write_table(pa.table({"image": pngs, "label": labels}), tmp_path / "train.parquet")
    x, y = to_tensors(
        load_mnist("parquet", data_files={"train": str(tmp_path / "train.parquet")})["train"]
    )
    assert torch.allclose(x[1], torch.tensor(imgs[1].reshape(-1) / 255.0, dtype=torch.float32))
    assert y.tolist() == labels


def test_load_mnist_bad_input(tmp_path):
    imgs, labels = _mnist_like(2, 3)
    _write_hf_parquet(tmp_path / "train.parquet", imgs, labels)
    files = {"train": str(tmp_path / "train.parquet")}
    with pytest.raises(ValueError, match=r"label column 'digit' not found.*\['image', 'label'\]"):
        load_mnist("parquet", data_files=files, label_column="digit")
    empty = tmp_path / "empty.parquet"
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": [], "label": []}, features=feats).to_parquet(str(empty))
    with pytest.raises(ValueError, match=r"split 'test'.*empty\.parquet.*no data rows"):
        load_mnist("parquet", data_files={"train": files["train"], "test": str(empty)})
    with pytest.raises(FileNotFoundError):
        load_mnist("parquet", data_files={"train": str(tmp_path / "nope.parquet")})
    with pytest.raises(FileNotFoundError):
        load_mnist(str(tmp_path / "missing_dir") + "/")


def test_hub_name_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(DataUnavailableError, match="not reachable.*local file or folder"):
        load_mnist("pyrobayes-test/not-a-dataset")


# ---------------------------------------------------------------- text


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_shipped_sentiment_set_is_balanced_clean_and_disjoint():
    dd = load_sentiment()
    assert dd["train"].num_rows == 350 and dd["test"].num_rows == 100
    sentences = list(dd["train"]["sentence"]) + list(dd["test"]["sentence"])
    assert len(sentences) >= 400 and len(set(sentences)) == len(sentences)
    assert not set(dd["train"]["sentence"]) & set(dd["test"]["sentence"])
    for split in ("train", "test"):
        counts = collections.Counter(dd[split]["label"])
        assert set(counts) == {0, 1} and counts[0] == counts[1]
    lengths = [len(s.split()) for s in sentences]
    assert min(lengths) <= 4 and max(lengths) >= 20  # genuinely varied lengths
    ood = load_ood_sentences()
    assert ood.num_rows >= 150 and len(set(ood["sentence"])) == ood.num_rows
    assert not set(ood["sentence"]) & set(sentences)
    assert len(set(ood["domain"])) >= 4
    readme = open(os.path.join(DATA_DIR, "README.md")).read()
    assert "written by hand" in readme


def test_user_text_file_goes_through_the_same_path(tmp_path):
    _write_jsonl(tmp_path / "tr.jsonl", [{"text": "good", "y": 1}, {"text": "bad", "y": 0}])
    dd = load_text_classification(
        "json",
        data_files={"train": str(tmp_path / "tr.jsonl")},
        text_columns="text",
        label_column="y",
        num_labels=2,
    )
    assert dd["train"].column_names == ["text", "label"] and list(dd["train"]["label"]) == [1, 0]
    with pytest.raises(ValueError, match=r"label column 'label' not found.*\['text', 'y'\]"):
        load_text_classification(data_files=str(tmp_path / "tr.jsonl"), text_columns="text")
    _write_jsonl(tmp_path / "bad.jsonl", [{"text": "good", "y": 1}, {"text": "meh", "y": 5}])
    with pytest.raises(
        ValueError, match=r"must hold integers in \[0, 1\]; 1 row\(s\) do not, e.g. row 1 = 5"
    ):
        load_text_classification(
            data_files=str(tmp_path / "bad.jsonl"),
            text_columns="text",
            label_column="y",
            num_labels=2,
        )


def _write_glue_sst2(folder):
    rows = [{"sentence": f"sentence number {i}", "label": i % 2, "idx": i} for i in range(6)]
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "train.parquet"))
    datasets.Dataset.from_list(rows[:4]).to_parquet(str(folder / "validation.parquet"))
    hidden = [{**r, "label": -1} for r in rows[:3]]
    datasets.Dataset.from_list(hidden).to_parquet(str(folder / "test.parquet"))


def test_load_glue_local_copy_drops_hidden_test_labels(tmp_path):
    _write_glue_sst2(tmp_path)
    with pytest.warns(UserWarning, match="'test' has hidden labels"):
        dd = load_glue("sst2", str(tmp_path))
    assert set(dd) == {"train", "validation"}
    assert dd["train"].num_rows == 6 and list(dd["validation"]["label"]) == [0, 1, 0, 1]
    # The same through a builder name and data_files (how the Hub's parquet is read).
    dd2 = load_glue("SST-2", "parquet", data_files={"train": str(tmp_path / "train.parquet")})
    assert dd2["train"]["sentence"][:] == dd["train"]["sentence"][:]


def test_load_glue_sentence_pairs(tmp_path):
    rows = [
        {"premise": "A man sleeps.", "hypothesis": "A person rests.", "label": 0, "idx": 0},
        {"premise": "It rains.", "hypothesis": "It is sunny.", "label": 2, "idx": 1},
    ]
    _write_jsonl(tmp_path / "train.jsonl", rows)
    dd = load_glue("mnli", "json", data_files={"train": str(tmp_path / "train.jsonl")})
    assert list(dd["train"]["label"]) == [0, 2]
    with pytest.raises(ValueError, match=r"text column 'sentence1', 'sentence2' not found"):
        load_glue("rte", "json", data_files={"train": str(tmp_path / "train.jsonl")})


def test_load_glue_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown GLUE task 'sst3'; valid tasks: cola, sst2, mrpc"):
        load_glue("sst3")
    assert "qnli" in GLUE_TASKS and GLUE_TASKS["stsb"].num_labels == 1
    _write_glue_sst2(tmp_path)
    files = {"train": str(tmp_path / "train.parquet")}
    with pytest.raises(
        ValueError, match=r"label column 'gold' not found.*\['sentence', 'label', 'idx'\]"
    ):
        load_glue("sst2", "parquet", data_files=files, label_column="gold")
    with pytest.raises(ValueError, match=r"integers in \[0, 1\].*row 2 = 2"):
        _write_jsonl(
            tmp_path / "bad.jsonl",
            [
                {"sentence": "a", "label": 0},
                {"sentence": "b", "label": 1},
                {"sentence": "c", "label": 2},
            ],
        )
        load_glue("sst2", "json", data_files={"train": str(tmp_path / "bad.jsonl")})
    datasets.Dataset.from_dict(
        {"sentence": [], "label": []},
        features=datasets.Features(
            {"sentence": datasets.Value("string"), "label": datasets.Value("int64")}
        ),
    ).to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(ValueError, match=r"split 'validation'.*empty\.parquet.*no data rows"):
        load_glue(
            "sst2", "parquet", data_files={**files, "validation": str(tmp_path / "empty.parquet")}
        )


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def test_tokenize_pads_to_the_longest_and_truncates(tokenizer):
    ds = datasets.Dataset.from_dict(
        {"sentence": ["Great.", "Not great at all, sadly."], "label": [1, 0]}
    )
    enc = tokenize(ds, tokenizer, max_length=32)
    ids = enc[:]["input_ids"]
    longest = len(tokenizer("Not great at all, sadly.")["input_ids"])
    assert ids.shape == (2, longest) and enc[:]["label"].tolist() == [1, 0]
    assert enc[:]["attention_mask"].sum(1).tolist() == [
        len(tokenizer("Great.")["input_ids"]),
        longest,
    ]
    assert tokenizer.decode(ids[1], skip_special_tokens=True) == "not great at all, sadly."
    short = tokenize(ds, tokenizer, max_length=4)
    assert short[:]["input_ids"].shape == (2, 4)
    pair = datasets.Dataset.from_dict({"sentence1": ["a b"], "sentence2": ["c"], "label": [0]})
    penc = tokenize(pair, tokenizer)
    assert penc[:]["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1]]  # [CLS] a b [SEP] | c [SEP]
    with pytest.raises(ValueError, match="cannot tell the text column"):
        tokenize(datasets.Dataset.from_dict({"body": ["x"]}), tokenizer)


# ---------------------------------------------------------------- regression


def test_regression_from_prior_shapes_determinism_and_noise():
    d = regression_from_prior(n_train=15, n_test=3000, seed=4, grid_size=4001)
    x_tr, y_tr, x_te, y_te, x_grid, f_grid, noise = d
    assert x_tr.shape == (15, 1) and y_tr.shape == (15,) and x_te.shape == (3000, 1)
    assert f_grid.shape == (4001,) and noise == pytest.approx(0.1)
    assert float(x_te.min()) >= -2 and float(x_te.max()) <= 2
    again = regression_from_prior(n_train=15, n_test=3000, seed=4, grid_size=4001)
    assert torch.equal(again.y_train, y_tr) and torch.equal(again.f_grid, f_grid)
    assert not torch.equal(regression_from_prior(15, 10, seed=5).y_train, y_tr)
    # y - f is the Gaussian noise (f interpolated on the fine grid): its std estimate from
    # 3000 points has a standard error of 0.1/sqrt(6000) = 0.0013, so 0.1 +- 0.008 is ~6 SE.
    f_at = np.interp(x_te[:, 0].numpy(), x_grid[:, 0].numpy(), f_grid.numpy())
    resid = y_te.numpy() - f_at
    assert abs(resid.std() - 0.1) < 0.008 and abs(resid.mean()) < 0.01
    # The function is a real draw from the prior, not flat.
    assert float(f_grid.std()) > 0.05
    with pytest.raises(ValueError, match="x_range"):
        regression_from_prior(5, 5, x_range=(1, -1))


def test_load_csv_regression_good_and_bad(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("time,temp,other\n0,1.5,a\n1,2.5,b\n2,3.0,c\n")
    x, y = load_csv_regression(str(good), "time", "temp")
    assert x.shape == (3, 1) and y.tolist() == [1.5, 2.5, 3.0]
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_csv_regression(str(tmp_path / "nope.csv"), "x", "y")
    with pytest.raises(ValueError, match=r"'x' not found.*\['time', 'temp', 'other'\]"):
        load_csv_regression(str(good), "x", "temp")
    nan = tmp_path / "nan.csv"
    nan.write_text("x,y\n0,1\n1,\n2,nan\n3,4\n")
    with pytest.raises(ValueError, match=r"2 row\(s\) have a missing, NaN.*rows 1, 2"):
        load_csv_regression(str(nan), "x", "y")
    text = tmp_path / "text.csv"
    text.write_text("x,y\n0,1\n1,oops\n")
    with pytest.raises(ValueError, match="row 1 holds 'oops'"):
        load_csv_regression(str(text), "x", "y")
    one = tmp_path / "one.csv"
    one.write_text("x,y\n0,1\n")
    with pytest.raises(ValueError, match="1 data point"):
        load_csv_regression(str(one), "x", "y")
