"""The ``pyrobayes`` command: a device torch cannot use is one error line, exit code 2."""

import pytest
import torch

from pyrobayes.jobs.cli import check_device, main


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize(
    "argv",
    [
        ["pfn", "train", "--steps", "1", "--device", "cuda"],
        ["classify", "digits", "--smoke", "--device", "cuda"],
    ],
)
def test_cuda_without_cuda_is_one_error_line_with_exit_code_2(argv, tmp_path, capsys, no_cuda):
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # no traceback
    command = " ".join(argv[:2]) if argv[0] == "pfn" else argv[0]
    assert err.startswith(f"pyrobayes {command}: error: --device 'cuda'")
    assert "torch sees no CUDA device" in err and "--device cpu" in err
    assert not out.exists()  # refused before any work


def test_device_check_names_the_problem(monkeypatch, no_cuda):
    assert check_device("cpu") == "cpu" and check_device(None) is None
    assert check_device("auto", allow_auto=True) == "auto"
    with pytest.raises(ValueError, match="'auto' is not a device torch knows"):
        check_device("auto")
    with pytest.raises(ValueError, match="'gpu' is not a device torch knows; use cpu, cuda"):
        check_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda:0") == "cuda:0"
    with pytest.raises(ValueError, match=r"'cuda:3': torch sees only 1 CUDA device"):
        check_device("cuda:3")
