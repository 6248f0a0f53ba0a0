"""benchmarks/bench_classifier_pfn.py's own parts: the grid cycle, the data sets, the NLL of
a PPD's draws, the resumable cache and its NUTS retry ladder, the PFN's per-data-set row."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from pyrobayes.pfn import PFN, PFNConfig


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).parent.parent / "benchmarks" / "bench_classifier_pfn.py"
    spec = importlib.util.spec_from_file_location("bench_classifier_pfn", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_classifier_pfn"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_any_24_consecutive_data_sets_cover_every_cell(bench):
    every = {(d, n, c) for d in bench.DS for n in bench.NS for c in bench.CS}
    for start in (0, 5, 97):
        assert {bench.cell(i) for i in range(start, start + 24)} == every


def test_data_sets_are_reproducible_and_match_their_cell(bench):
    model, (xt, yt, xq, yq), latents = bench.dataset(13, seed=7, n_test=20)
    d, n, c = bench.cell(13)
    assert xt.shape == (n, d) and xq.shape == (20, d) and yt.dtype == torch.long
    assert int(torch.cat([yt, yq]).max()) < c
    again = bench.dataset(13, seed=7, n_test=20)[1]
    assert all(torch.equal(a, b) for a, b in zip((xt, yt, xq, yq), again))
    # the generating weights reproduce the labels' model: one [out, in] matrix per layer
    shapes = sorted(tuple(v.shape) for k, v in latents.items() if k.endswith("weight"))
    assert shapes == sorted([(50, d), (50, 50), (c, 50)])


def test_label_log_probs_is_each_draws_probability_of_the_true_label(bench):
    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.0, 1.0]]])
    lp = bench.label_log_probs(probs, torch.tensor([0, 0]))
    expected = torch.tensor([[0.9, 0.2], [0.5, 1e-300]], dtype=torch.float64).log()
    assert torch.allclose(lp, expected)


def test_cache_runs_each_setting_once_and_resumes_from_its_file(bench, tmp_path):
    calls = []
    cache = bench.Cache(tmp_path / "c.json", cached_only=False)
    assert cache.get("ds0", "k", lambda: calls.append(1) or {"nll": 1.0}) == {"nll": 1.0}
    assert cache.get("ds0", "k", lambda: calls.append(1) or {"nll": 2.0}) == {"nll": 1.0}
    again = bench.Cache(tmp_path / "c.json", cached_only=True)  # a new run reads the file
    assert again.get("ds0", "k", None) == {"nll": 1.0} and again.get("ds1", "k", None) is None
    assert calls == [1]
    # a second run writing meanwhile (another data set) keeps the first run's results
    other = bench.Cache(tmp_path / "c.json", cached_only=False)
    cache.get("ds2", "k", lambda: {"nll": 3.0})
    other.get("ds3", "k", lambda: {"nll": 4.0})
    final = bench.Cache(tmp_path / "c.json", cached_only=True).data
    assert {ds: v["k"]["nll"] for ds, v in final.items()} == {"ds0": 1.0, "ds2": 3.0, "ds3": 4.0}


def test_retry_ladder_reruns_only_what_did_not_converge(bench, tmp_path, monkeypatch):
    args = bench.parse_args(["--nuts-retry", "2", "4", "--nuts-retry-depth", "10"])
    runs = []

    def fake_nuts(i, args, scale, depth):  # R-hat falls with the budget: 1.2, 1.1, 1.01
        runs.append((i, scale, depth))
        r_hat = {1: 1.2, 2: 1.1, 4: 1.01}[scale]
        return {"warmup": scale, "samples": scale, "depth": depth, "nll": 0.5, "mc_se": 0.0,
                "max_r_hat": r_hat, "min_ess": 400.0, "min_ess_tail": 400.0, "num_chains": 4,
                "seconds": 1.0}  # fmt: skip

    monkeypatch.setattr(bench, "run_nuts", fake_nuts)
    cache = bench.Cache(tmp_path / "c.json", cached_only=False)
    r = bench.nuts_result(cache, args, 3)
    assert runs == [(3, 1, 8), (3, 2, 10), (3, 4, 10)] and r["retried"] and bench.is_converged(r)
    assert bench.nuts_result(cache, args, 3) == r and len(runs) == 3  # all from the cache


def test_pfn_row_of_a_data_set(bench):
    torch.manual_seed(0)
    cfg = PFNConfig(num_features=20, task="classification", num_classes=5, input_mode="tabular",
                    d_model=16, n_layers=1, n_heads=2, d_ff=32, max_train=500,
                    x_low=(-6.0,) * 20, x_high=(6.0,) * 20)  # fmt: skip
    args = bench.parse_args(["--n-test", "30"])
    r = bench.pfn_result(PFN(cfg).eval(), 4, args)  # d=2, n=30, C=5
    assert r["sum_to_one"] < 1e-5 and r["seconds"] > 0
    # an untrained PFN is no better than the label frequencies, and no PPD beats the oracle
    # by much on 30 queries; all three are finite NLLs of 5 classes
    for key in ("nll", "frequency_nll", "oracle_nll"):
        assert 0 < r[key] < 10


def test_retime_reruns_nuts_at_each_references_final_budget(bench, monkeypatch):
    """``--retime-nuts`` times NUTS again at the budget of the reference in the table (a
    retried one at its larger budget and depth), next to the PFN, and skips data sets with
    no reference."""
    calls = []
    monkeypatch.setattr(
        bench, "run_nuts", lambda i, a, s, d: calls.append((i, s, d)) or {"seconds": 2.0}
    )
    monkeypatch.setattr(bench, "pfn_result", lambda pfn, i, a: {"seconds": 0.001})
    args = bench.parse_args(["--nuts-warmup", "50"])
    rows = [
        {"i": 0, "d": 2, "n": 30, "c": 2, "nuts": {"warmup": 50, "depth": 8}},
        {"i": 1, "d": 5, "n": 30, "c": 2, "nuts": {"warmup": 100, "depth": 10, "retried": True}},
        {"i": 2, "d": 5, "n": 30, "c": 2, "nuts": None},
    ]
    timed = bench.retime(None, rows, args)
    assert calls == [(0, 1, 8), (1, 2, 10)]
    assert [t["nuts_s"] / t["pfn_s"] for t in timed] == pytest.approx([2000, 2000])
    assert "2,000" in bench.retime_table(timed)


def test_logit_scale_prior_makes_other_data_sets_and_scales_the_oracle(bench):
    """``--logit-scale-prior``: the data sets come from the prior with a latent logit scale
    (their own cache keys), the scale is among the generating latents, and the oracle's
    logits are the scaled ones (a huge scale makes its labels the argmax: oracle NLL ~ 0)."""
    plain = bench.parse_args(["--n-test", "30"])
    sharp = bench.parse_args(["--n-test", "30", "--logit-scale-prior", "6.9,0.001"])
    old = bench.parse_args(["--n-test", "30", "--logit-scale-prior", "none"])
    assert bench._ds_key(plain, 4) != bench._ds_key(sharp, 4)
    # the shipped prior's data sets, and the tau = 1 ones under the cache's old keys
    assert (
        bench._ds_key(plain, 4).endswith("-tau0,1")
        and bench._ds_key(old, 4) == "seed2000-i4-test30"
    )
    model, _, latents = bench.dataset(4, 2000, 30, bench.logit_scale_prior(sharp))
    assert float(latents[model.likelihood.scale_site]) == pytest.approx(992.3, rel=0.01)
    torch.manual_seed(0)
    cfg = PFNConfig(num_features=20, task="classification", num_classes=5, input_mode="tabular",
                    d_model=16, n_layers=1, n_heads=2, d_ff=32, max_train=500,
                    x_low=(-6.0,) * 20, x_high=(6.0,) * 20)  # fmt: skip
    assert bench.pfn_result(PFN(cfg).eval(), 4, sharp)["oracle_nll"] < 1e-3
    assert "--logit-scale-prior 6.9,0.001" in bench.command_line(sharp)
    with pytest.raises(SystemExit):
        bench.parse_args(["--logit-scale-prior", "0"])
