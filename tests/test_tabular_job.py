"""The real-data comparison: data loading, split protocol, raw units, ARD GP, the job."""

import argparse
import json
import math

import pytest
import torch

from pyrobayes.compare import ComparisonRow, ComparisonTable, mean_se_table
from pyrobayes.data.tabular import load_tabular
from pyrobayes.gp import fit_ard_gp, gp_log_marginal
from pyrobayes.jobs.cli import main
from pyrobayes.jobs.tabular_regression import (
    TabularConfig,
    _load_pfn,
    add_dataclass_arguments,
    config_from_args,
    fit_mlp_heldout,
    make_splits,
    standardise_split,
)
from pyrobayes.ppd import AffinePPD, NormalMixturePPD, affine_ppd


def _csv(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ----------------------------------------------------------------- data


def test_builtin_sets_are_the_real_data():
    dia = load_tabular("diabetes")
    assert dia.x.shape == (442, 10) and dia.target_name == "target"
    # first patient of Efron et al. (2004): age 59, bmi 32.1, progression 151
    assert dia.x[0, 0] == 59 and dia.x[0, 2] == pytest.approx(32.1) and dia.y[0] == 151
    mc = load_tabular("motorcycle")
    assert mc.x.shape == (133, 1) and mc.feature_names == ("times",)
    # MASS::mcycle: first row (2.4 ms, 0.0 g), last row (57.6 ms, 10.7 g), min accel -134
    assert (float(mc.x[0, 0]), float(mc.y[0])) == (2.4, 0.0)
    assert (float(mc.x[-1, 0]), float(mc.y[-1])) == (57.6, 10.7)
    assert float(mc.y.min()) == -134.0


def test_csv_with_several_feature_columns(tmp_path):
    path = _csv(
        tmp_path, "a,b,c,y\n" + "".join(f"{i},{i * i},{-i},{2 * i + 1}\n" for i in range(6))
    )
    t = load_tabular(path, ["a", "c"], "y")
    assert t.feature_names == ("a", "c") and t.x.shape == (6, 2)
    assert t.x[:, 1].tolist() == [-float(i) for i in range(6)]
    assert load_tabular(path, "all", "y").feature_names == ("a", "b", "c")
    assert load_tabular(path, None, "b").feature_names == ("a", "c", "y")


@pytest.mark.parametrize(
    "text, x, y, message",
    [
        ("a,b,y\n1,x1,1\n2,x2,2\n3,x3,3\n4,x4,5\n", ["a", "b"], "y", "column 'b' is not numeric"),
        (
            "a,b,y\n1,7,1\n2,7,2\n3,7,3\n4,7,5\n",
            ["a", "b"],
            "y",
            "constant feature column(s) ['b']",
        ),
        ("a,y\n1,1\n2,\n,3\n4,5\n5,6\n", ["a"], "y", "2 row(s) have a missing, NaN"),
        ("a,y\n1,1\n2,2\n", ["a"], "y", "2 row(s), need at least 4"),
        ("a,y\n1,1\n2,2\n3,3\n4,5\n", ["q"], "y", "available columns: ['a', 'y']"),
        ("a,y\n1,1\n2,2\n3,3\n4,5\n", ["a"], None, "name the target column"),
    ],
)
def test_bad_tables_are_clear_errors(tmp_path, text, x, y, message):
    with pytest.raises(ValueError) as err:
        load_tabular(_csv(tmp_path, text), x, y)
    assert message in str(err.value)


def test_unknown_data_name_lists_the_builtins():
    with pytest.raises(FileNotFoundError, match="diabetes, motorcycle"):
        load_tabular("boston")


# ----------------------------------------------------------------- protocol


def test_splits_use_every_row_and_are_seeded():
    splits = make_splits(101, 5, 0.1, seed=3)
    for tr, te in splits:
        assert len(te) == 10 and len(tr) == 91
        assert sorted(torch.cat([tr, te]).tolist()) == list(range(101))
    again = make_splits(101, 5, 0.1, seed=3)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(splits, again))
    assert not torch.equal(splits[0][1], splits[1][1])


def test_standardisation_uses_the_training_rows_only():
    torch.manual_seed(0)
    x = torch.randn(50, 3, dtype=torch.float64) * 4 + 2
    y = torch.randn(50, dtype=torch.float64) * 30 + 100
    tr, te = make_splits(50, 1, 0.2, seed=0)[0]
    s = standardise_split(x, y, tr, te)
    x2, y2 = x.clone(), y.clone()
    x2[te], y2[te] = 1e6, -1e6  # test rows must not move any statistic
    s2 = standardise_split(x2, y2, tr, te)
    assert torch.equal(s.x_mean, s2.x_mean) and torch.equal(s.x_std, s2.x_std)
    assert (s.y_mean, s.y_std) == (s2.y_mean, s2.y_std)
    assert s.x_train.mean(0).abs().max() < 1e-5 and (s.x_train.std(0) - 1).abs().max() < 1e-5
    assert float(s.y_train.mean()).__abs__() < 1e-5
    assert torch.equal(s.y_test_raw, y[te].float())


def test_affine_map_changes_nll_by_exactly_log_scale():
    from pyrobayes.pfn import pretrained

    torch.manual_seed(0)
    z = torch.randn(20)
    a, b = 150.0, 77.0
    y = a + b * z
    mix = NormalMixturePPD(torch.randn(8, 20) * 0.3, torch.rand(8, 20) + 0.2)
    raw = affine_ppd(mix, a, b)
    assert isinstance(raw, NormalMixturePPD)  # exact, not wrapped
    torch.testing.assert_close(raw.log_prob(y), mix.log_prob(z) - math.log(b), atol=1e-4, rtol=0)
    # a non-Normal PPD (the PFN's bar distribution) goes through the AffinePPD wrapper
    bar = pretrained("gp-1d").predict(torch.linspace(-1, 1, 5), torch.zeros(5), torch.zeros(20))
    wrapped = affine_ppd(bar, a, b)
    assert isinstance(wrapped, AffinePPD)
    torch.testing.assert_close(
        wrapped.log_prob(y), bar.log_prob(z) - math.log(b), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(wrapped.mean, a + b * bar.mean)
    torch.testing.assert_close(wrapped.variance, b**2 * bar.variance)
    torch.testing.assert_close(wrapped.cdf(y), bar.cdf(z))
    lo, hi = wrapped.interval(0.9)
    blo, bhi = bar.interval(0.9)
    torch.testing.assert_close(lo, a + b * blo, atol=1e-3, rtol=1e-5)
    with pytest.raises(ValueError, match="positive scale"):
        AffinePPD(bar, 0.0, -1.0)


def test_mean_se_table_is_mean_and_standard_error():
    vals = [0.5, 1.0, 2.0]
    tables = [
        ComparisonTable("regression", ("nll",), (ComparisonRow("m", (v,)),), num_points=10)
        for v in vals
    ]
    t = mean_se_table(tables, methods=["absent", "m"])
    mean = sum(vals) / 3
    se = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2 / 3)
    assert t.methods == ("absent", "m") and t.num_points == 30
    assert t.row("absent")["nll"] is None
    assert t.rows[1].values[0] == pytest.approx(mean) and t.rows[1].errors[0] == pytest.approx(se)
    assert f"± {se:.2g}" in t.to_markdown()
    assert ComparisonTable.from_json(t.to_json()) == t


# ----------------------------------------------------------------- GP


def test_ard_gp_finds_the_irrelevant_features_and_its_exact_marginal():
    torch.manual_seed(0)
    x = torch.randn(80, 3)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(80)
    gp = fit_ard_gp(x, y, steps=200)
    ls = gp.lengthscales
    assert ls[0] < 1.0 and ls[1] > 3 * ls[0] and ls[2] > 3 * ls[0]
    assert 0.05 < gp.noise_std < 0.2  # the true noise is 0.1
    # GPyTorch's objective is the exact log marginal likelihood, at the fitted values ...
    lml = gp_log_marginal(x, y, ls, gp.outputscale, gp.noise_std)
    assert gp.log_marginal == pytest.approx(lml, abs=1e-6)
    # ... which is the density of y under N(0, K + s^2 I), computed independently here
    xd, yd = x.double(), y.double()
    sq = ((xd[:, None, :] - xd[None, :, :]) / ls).pow(2).sum(-1)
    k = gp.outputscale * torch.exp(-0.5 * sq) + gp.noise_std**2 * torch.eye(80, dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(torch.zeros(80, dtype=torch.float64), k)
    assert lml == pytest.approx(float(mvn.log_prob(yd)), abs=1e-8)
    ppd = gp.predict(x[:5])
    assert ppd.batch_shape == (5,) and (ppd.mean - y[:5]).abs().max() < 0.4


# ----------------------------------------------------------------- MLP baseline + MOPED start


def test_mlp_baseline_does_not_interpolate_its_noise_is_the_true_one():
    # 3,151 weights on 180 rows: trained to convergence the training residuals go to ~0.
    # Early stopping on a held-out 10% and the held-out residual must recover sigma = 0.3.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 3, generator=g)
    sigma = 0.3
    y = torch.sin(1.5 * x[:, 0]) + 0.5 * x[:, 1] + sigma * torch.randn(200, generator=g)
    net, noise, info = fit_mlp_heldout(x, y, 2000, seed=0)
    assert sigma / 2 < noise < 2 * sigma
    assert info["n_val"] == 20 and 1 <= info["best_step"] <= 2000
    with torch.no_grad():
        train_rms = float((net(x).squeeze(-1) - y).pow(2).mean().sqrt())
    assert train_rms > sigma / 2  # the kept weights do not fit the noise either
    with pytest.raises(ValueError, match="too few"):
        fit_mlp_heldout(x[:3], y[:3], 10, seed=0)


def test_moped_starts_the_noise_site_at_the_given_value_or_the_prior_median():
    from pyrobayes.guides import MOPEDLowRank, MOPEDNormal
    from pyrobayes.models import tabular_regression_model

    x = torch.randn(8, 2)
    model = tabular_regression_model(2)
    # Pyro's fallback (init_to_feasible) would start sigma at exp(0) = 1; the prior median is 0.2
    for cls in (MOPEDNormal, MOPEDLowRank):
        g = cls(model, delta=0.1)
        g.setup(x)
        assert float(g.median(x)[model.likelihood.noise_site]) == pytest.approx(0.2, rel=1e-5)
    g = MOPEDNormal(model, delta=0.1, init_values={model.likelihood.noise_site: 0.37})
    g.setup(x)
    med = g.median(x)
    assert float(med[model.likelihood.noise_site]) == pytest.approx(0.37, rel=1e-5)
    # the weights still start at the network's values (MOPED)
    from pyrobayes.convert import pretrained_values

    for site, w in pretrained_values(model).items():
        torch.testing.assert_close(med[site], w)
    weight_site = next(k for k in med if k.endswith("weight"))
    with pytest.raises(ValueError, match="weight sites"):
        MOPEDNormal(model, init_values={weight_site: torch.zeros(1)})


# ----------------------------------------------------------------- PFN coverage + job


def test_too_many_features_for_the_pfn_is_a_note_not_an_exception():
    pfn, why = _load_pfn(100, 10_000)
    assert pfn is None and "PFN" in why and ("does not cover" in why or "no `bnn-tabular`" in why)


def test_config_drives_the_command_line():
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, TabularConfig)
    args = p.parse_args(["--data", "d.csv", "--x", "a", "b", "--splits", "3", "--no-nuts"])
    cfg = config_from_args(TabularConfig, args)
    assert cfg == TabularConfig(data="d.csv", x_cols=("a", "b"), splits=3, no_nuts=True)
    with pytest.raises(ValueError, match="splits must be >= 1"):
        TabularConfig(data="x.csv", splits=0)


TINY = [
    "--splits", "2", "--mlp-steps", "60", "--svi-steps", "30", "--num-samples", "20",
    "--nuts-warmup", "5", "--nuts-samples", "5", "--nuts-max-tree-depth", "4", "--gp-steps", "30", "--no-progress",
    "--ensemble-steps", "30", "--dropout-steps", "20", "--dropout-passes", "10",
]  # fmt: skip


def test_real_data_job_end_to_end(tmp_path, capsys):
    torch.manual_seed(0)
    x = torch.rand(40, 2) * 4 - 2
    y = 10 + 5 * torch.sin(2 * x[:, 0]) + 0.5 * torch.randn(40)
    rows = "".join(f"{a:.4f},{b:.4f},{t:.4f}\n" for (a, b), t in zip(x.tolist(), y.tolist()))
    path = _csv(tmp_path, "u,v,target\n" + rows)
    out = tmp_path / "o"
    assert main(["compare", "--data", path, "--y", "target", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    payload = json.loads((out / "compare.json").read_text())
    assert payload["n_train"] == 36 and payload["n_test"] == 4  # every row used, 90/10
    assert payload["features"] == ["u", "v"]
    table = ComparisonTable.from_dict(payload["table"])
    assert table.reference == "NUTS" and table.num_points == 8
    for m in ("MLP + fitted noise", "deep ensemble", "MC dropout", "SVI (MOPED)",
              "exact GP (ARD)", "NUTS"):  # fmt: skip
        row = table.row(m)
        assert math.isfinite(row["nll"]) and row["coverage_90"] is not None
    # the shipped bnn-tabular PFN covers d=2, n=36: it answers like every other method
    assert math.isfinite(table.row("PFN (bnn-tabular)")["nll"])
    # one latent-noise model: SVI and NUTS report their noise, NUTS its diagnostics
    for info in payload["split_info"]:
        assert info["mlp_noise_std"] > 0.05 and info["svi_noise_std"] > 0
        assert info["nuts"]["noise_std_median"] > 0 and "max_r_hat" in info["nuts"]
    # each split fits its own guide (Pyro's global param store must not carry split 1's over)
    svi_noise = [info["svi_noise_std"] for info in payload["split_info"]]
    assert svi_noise[0] != svi_noise[1]
    # raw units: y has scale ~5 around 10, so a sane NLL is far from standardised values
    assert table.row("exact GP (ARD)")["rmse"] < 5
    assert "±" in printed and (out / "compare.png").exists()
    assert not (out / "compare-bands.png").exists()  # bands only for 1-D data


def test_bad_real_data_from_the_cli(tmp_path, capsys):
    path = _csv(tmp_path, "a,b,y\n1,k,1\n2,l,2\n3,m,3\n4,n,5\n5,o,6\n")
    assert (
        main(
            [
                "compare",
                "--data",
                path,
                "--x",
                "all",
                "--y",
                "y",
                *TINY,
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "column 'b' is not numeric" in err and not (tmp_path / "o").exists()


def test_python_api_runs_the_protocol_and_plots_it(tmp_path):
    # The Python side of `pyrobayes compare --data`: what notebook 5 uses.
    from pyrobayes import TabularConfig as Cfg
    from pyrobayes import plot_tabular_summary, run_tabular

    torch.manual_seed(1)
    x = torch.rand(30, 3) * 4 - 2
    y = 3 * x[:, 0] - x[:, 2] + 0.3 * torch.randn(30)
    rows = "".join(
        f"{a:.4f},{b:.4f},{c:.4f},{t:.4f}\n" for (a, b, c), t in zip(x.tolist(), y.tolist())
    )
    cfg = Cfg(
        data=_csv(tmp_path, "a,b,c,y\n" + rows), y_col="y", splits=2, mlp_steps=40,
        svi_steps=10, num_samples=10, gp_steps=10, nuts_warmup=5, nuts_samples=5,
        nuts_max_tree_depth=3, nuts_splits=1, out=str(tmp_path / "o"), no_progress=True,
        ensemble_steps=20, dropout_steps=10, dropout_passes=5,
    )  # fmt: skip
    res = run_tabular(cfg)
    assert set(res) == {"table", "nuts_table", "split_tables", "notes", "infos", "files", "rows"}
    assert len(res["split_tables"]) == len(res["infos"]) == 2
    assert any("first 1 of 2 splits" in n for n in res["notes"])
    for info in res["infos"]:  # the PFN's check on the 27 training rows (test rows unseen)
        check = info["pfn_self_check"]
        assert 0 <= check["coverage_50"] <= check["coverage_90"] <= 1
        assert check["ok"] == (abs(check["coverage_50"] - 0.5) <= check["tolerance"])
    # NUTS ran on split 1 only: the paired table is every method on that split alone
    one = res["split_tables"][0]
    for m in res["table"].methods:
        assert res["nuts_table"].row(m)["nll"] == pytest.approx(one.row(m)["nll"])
    assert res["table"].row("NUTS")["nll"] == pytest.approx(one.row("NUTS")["nll"])
    md = res["files"]["md"].read_text()
    assert "every method on the same splits" in md and "NUTS max R-hat" in md
    assert res["files"]["json"].exists() and res["files"]["png"].exists()
    fig = plot_tabular_summary(res["table"], title="toy")
    ax_nll, ax_cov = fig.axes
    assert [t.get_text() for t in ax_nll.get_yticklabels()] == list(res["table"].methods)
    assert ax_cov.get_ylabel() == "empirical coverage"


def test_a_feature_constant_on_the_training_rows_is_left_out_of_that_split():
    # naval's standard splits have two such columns; no method can learn from them
    x = torch.stack([torch.arange(6.0), torch.tensor([1.0, 1, 1, 1, 5, 5])], 1)
    y = 2 * x[:, 0]
    s = standardise_split(x, y, torch.arange(4), torch.tensor([4, 5]))
    assert s.dropped_features == (1,) and s.x_train.shape == (4, 1) and s.x_test.shape == (2, 1)
    with pytest.raises(ValueError, match="every feature is constant"):
        standardise_split(x[:, 1:], y, torch.arange(4), torch.tensor([4, 5]))
