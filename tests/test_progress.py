"""Progress output: tqdm for people watching, a few plain lines for logs."""

import io

from pyrobayes.progress import PlainProgress, progress_bar


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_plain_progress_in_a_log_prints_few_lines_without_carriage_returns():
    log = io.StringIO()  # not a TTY, not Jupyter
    bar = progress_bar(range(1000), enabled=True, desc="SVI", unit="epoch", file=log)
    assert isinstance(bar, PlainProgress)
    seen = 0
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.3g}")
        seen += 1
    bar.close()  # closing twice prints nothing more
    assert seen == 1000
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 10 <= len(lines) <= 12  # start, every 10%, end
    assert lines[0].startswith("SVI: 0/1000 epoch (0%)")
    assert lines[-1].startswith("SVI: 1000/1000 epoch (100%) loss=0.001")
    assert any("(50%)" in line for line in lines)


def test_plain_progress_without_a_length_reports_counts():
    log = io.StringIO()
    assert list(progress_bar(iter(range(5)), desc="draws", unit="it", file=log)) == list(range(5))
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("draws: 0 it") and lines[-1].startswith("draws: 5 it")


def test_disabled_prints_nothing_and_terminals_get_tqdm():
    log = io.StringIO()
    bar = progress_bar(range(3), enabled=False, desc="x", file=log)
    assert list(bar) == [0, 1, 2]
    bar.set_postfix(loss=1)
    bar.close()
    assert log.getvalue() == ""
    tty = FakeTTY()
    bar = progress_bar(range(3), enabled=True, desc="x", file=tty)
    from tqdm.std import tqdm

    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]
    bar.close()
    assert "\r" in tty.getvalue()  # a live bar redraws in place


def test_fit_progress_in_a_log(capsys):
    import torch

    from pyrobayes import Gaussian, fit, to_bayesian

    model, guide = to_bayesian(torch.nn.Linear(1, 1), likelihood=Gaussian(0.1))
    x = torch.randn(16, 1)
    fit(model, guide, (x, x[:, 0]), epochs=40, batch_size=8, progress=True)
    err = capsys.readouterr().err  # pytest's capture is not a TTY
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("SVI: 0/40 epoch") and lines[-1].startswith("SVI: 40/40 epoch")
    assert len(lines) <= 12 and "loss=" in lines[-1]
