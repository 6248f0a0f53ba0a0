"""`pyrobayes classify digits|text` end to end in the smoke configuration."""

import json

import pytest
import torch
from PIL import Image

from pyrobayes.jobs.classify import run_digits
from pyrobayes.jobs.cli import main

COLUMNS = ["accuracy", "nll", "ece", "brier", "auroc_entropy", "auroc_mutual_information", "time_s"]


def _read(out, task):
    data = json.loads((out / f"classify_{task}.json").read_text())
    png = out / f"reliability_{task}.png"
    with Image.open(png) as img:
        assert img.size[0] > img.size[1] > 100  # two reliability diagrams side by side
    return data


def test_classify_digits_command_smoke(tmp_path, capsys):
    assert main(["classify", "digits", "--smoke", "--no-progress", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| deterministic |" in printed and "| bayesian |" in printed
    data = _read(tmp_path, "digits")
    table = data["table"]
    assert table["columns"] == COLUMNS
    assert [r["method"] for r in table["rows"]] == ["deterministic", "bayesian"]
    assert set(data["ood_tables"]) == {"noise", "flip", "transpose"}
    assert data["info"]["n_train"] == 200 and data["info"]["num_samples"] == 4
    for row in table["rows"]:
        # 10 classes: even two epochs on 200 images beat chance (0.1) by far.
        assert row["accuracy"] > 0.3 and 0 <= row["ece"] <= 1 and row["nll"] > 0
    # One deterministic draw has no epistemic part: its mutual information is 0 everywhere,
    # so that score cannot separate anything (AUROC exactly 0.5).
    assert table["rows"][0]["auroc_mutual_information"] == 0.5


def test_run_digits_returns_ppds():
    result = run_digits(smoke=True, progress=False, verbose=False, num_samples=3)
    det, bay = result.ppds["deterministic"], result.ppds["bayesian"]
    assert det.num_draws == 1 and bay.num_draws == 3
    assert det.batch_shape == bay.batch_shape == result.labels.shape == (100,)
    assert torch.allclose(bay.probs.sum(-1), torch.ones(100))
    assert float(bay.mutual_information().mean()) > 0  # draws from q really differ
    assert result.metric("bayesian", "accuracy") == pytest.approx(
        float((bay.probs.argmax(-1) == result.labels).float().mean())
    )


def test_classify_text_command_smoke(tmp_path, capsys):
    code = main(
        [
            "classify",
            "text",
            "--smoke",
            "--no-progress",
            "--out",
            str(tmp_path),
            "--bayes",
            "head+last",
        ]
    )
    assert code == 0
    info = _read(tmp_path, "text")["info"]
    assert info["include"] == ["bert.encoder.layer.5", "bert.pooler.dense", "classifier"]
    # layer 5 (4*384*384 + 2*384*1536 + biases and norms) + pooler + classifier
    layer = 4 * (384 * 384 + 384) + (384 * 1536 + 1536) + (1536 * 384 + 384) + 2 * 2 * 384
    assert info["bayesian_parameters"] == layer + (384 * 384 + 384) + (384 * 2 + 2)
    assert info["n_train"] == 8 and info["n_ood"] == 6
    assert "Bayesian part 'head+last'" in capsys.readouterr().out


def test_classify_bad_options_fail_fast(capsys):
    assert main(["classify", "text", "--task", "sst3", "--smoke", "--no-progress"]) == 2
    assert "valid tasks: cola, sst2" in capsys.readouterr().err
    assert main(["classify", "text", "--bayes", "tail", "--smoke", "--no-progress"]) == 2
    assert "unknown Bayesian part 'tail'; valid: head, head+last, all, last:K" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["classify", "images"])


def test_save_result_with_a_single_method(tmp_path):
    # one method gives one Axes, not an array of them: the reliability figure must still draw
    from pyrobayes.jobs.classify.result import finish_result, point_ppd, save_result

    ppds = {"net": point_ppd(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))}
    result = finish_result(
        "digits", ppds, torch.tensor([0, 1]), {}, None, {}, {}, out=None, verbose=False
    )
    save_result(result, str(tmp_path), verbose=False)
    assert (tmp_path / "reliability_digits.png").stat().st_size > 1000
