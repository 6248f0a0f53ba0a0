"""pfn_self_check: data from the PFN's own prior pass, data its prior does not cover fail,
and the job notes a failure without touching the PFN row's numbers."""

import pytest
import torch

from pyrobayes.jobs.tabular_regression import pfn_check_note
from pyrobayes.pfn import TabularBNNPrior, pfn_self_check, pretrained


@pytest.fixture(scope="module")
def pfn():
    return pretrained("bnn-tabular")


def test_data_sets_drawn_from_the_prior_pass(pfn):
    # PITs of the prior's own data sets are uniform: coverage of the 50% interval ~0.5
    # (binomial s.e. 0.03 on 300 rows; the check allows 0.115)
    torch.manual_seed(0)
    prior = TabularBNNPrior()
    covs = []
    for _ in range(8):
        x, y = prior.sample(1, 300)
        check = pfn_self_check(pfn, x[0], y[0])
        assert check.ok, check.message()
        covs.append(check.coverage_50)
    assert abs(sum(covs) / len(covs) - 0.5) < 0.04


def test_nearly_noiseless_data_fail_with_intervals_too_wide(pfn):
    # a smooth function with noise 0.01 (~0.008 of y's std): far below the prior's noise
    # (LogNormal(log 0.2, 0.8) standardised units), the yacht situation
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, generator=g)
    y = torch.sin(2 * x[:, 0]) + x[:, 1] ** 2 + 0.01 * torch.randn(300, generator=g)
    check = pfn_self_check(pfn, x, y)
    assert not check.ok and check.coverage_50 > 0.65
    assert "too wide" in check.message() and "failed" in check.message()
    noisy = torch.sin(2 * x[:, 0]) + x[:, 1] ** 2 + 0.5 * torch.randn(300, generator=g)
    assert pfn_self_check(pfn, x, noisy).ok  # the same function with the prior's noise


def test_wide_and_long_tables_use_the_pfns_trained_size(pfn):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(800, 14, generator=g)
    y = x[:, 0] + 0.3 * torch.randn(800, generator=g)
    check = pfn_self_check(pfn, x, y, folds=4)
    assert len(check.features) == pfn.config.num_features == 10
    assert list(check.features) == sorted(set(check.features))
    assert check.context_rows == pfn.config.max_train and check.rows == 800
    assert check == pfn_self_check(pfn, x, y, folds=4)  # seeded


def test_bad_input_is_named(pfn):
    x, y = torch.randn(30, 2), torch.randn(30)
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        pfn_self_check(pfn, x, y, folds=1)
    with pytest.raises(ValueError, match="at least 10 rows for 5 folds"):
        pfn_self_check(pfn, x[:9], y[:9])
    with pytest.raises(ValueError, match="30 rows but y_train has 29"):
        pfn_self_check(pfn, x, y[:29])
    with pytest.raises(ValueError, match="needs a regression PFN"):
        pfn_self_check(pretrained("bnn-tabular-classifier"), x, (y > 0).long())


def test_the_job_notes_a_failed_check_only():
    ok = {"pfn_self_check": {"coverage_50": 0.52, "tolerance": 0.1, "ok": True}}
    bad = {"pfn_self_check": {"coverage_50": 0.85, "tolerance": 0.1, "ok": False}}
    assert pfn_check_note([ok, ok, {}]) is None
    note = pfn_check_note([bad, ok])
    assert note.startswith("PFN self-check failed on 1 of 2 splits") and "too wide" in note


def test_pfn_train_takes_the_tabular_noise_prior_from_the_command_line():
    # what a PFN for nearly noise-free tables (yacht) would be trained on: a wider noise prior
    import argparse

    from pyrobayes.pfn import train as train_mod

    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser)
    args = parser.parse_args(["--out", "x", "--prior", "bnn-tabular", "--noise-prior=-3,1.2"])
    prior = train_mod.build_prior(args)
    assert prior.describe()["noise_prior"] == "LogNormal(loc=-3, scale=1.2)"
    torch.manual_seed(0)
    prior.sample(64, 20)
    assert prior.last_noise.median() < 0.1  # median exp(-3) = 0.05, not the default's 0.2
    default = train_mod.build_prior(parser.parse_args(["--out", "x", "--prior", "bnn-tabular"]))
    assert default.describe() == TabularBNNPrior().describe()
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--prior", "bnn-tabular", "--noise-prior", "none"])


def test_compare_regression_pfns_pairs_the_same_data_sets(capsys, tmp_path):
    # benchmarks/compare_regression_pfns.py: a checkpoint against itself differs by exactly 0
    import importlib.util
    from pathlib import Path

    from pyrobayes.pfn import save_checkpoint

    path = Path(__file__).parent.parent / "benchmarks" / "compare_regression_pfns.py"
    spec = importlib.util.spec_from_file_location("compare_regression_pfns", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    save_checkpoint(pretrained("bnn-tabular"), tmp_path / "same")
    mod.main(["--b", str(tmp_path / "same"), "--sets", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("B - A NLL +0.0000 ± 0.0000 (3 data sets)" in ln for ln in lines)
