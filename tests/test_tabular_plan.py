"""The real-data job at scale: the up-front plan (method forms, estimates, the budget
message), the sparse GP, the PFN beyond its trained rows, progress lines, bench_uci's cache."""

import importlib.util
import io
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

from pyrobayes.gp import fit_sparse_ard_gp, gp_log_marginal
from pyrobayes.jobs.cli import main
from pyrobayes.jobs.tabular_plan import PlanError, pfn_subset_ppd, plan_tabular
from pyrobayes.jobs.tabular_regression import TabularConfig, run_tabular
from pyrobayes.ppd import MixturePPD, normal_ppd
from pyrobayes.progress import Heartbeat, PlainProgress

GIB = 2**30
BIG = dict(n_train=45_000, n_test=5_000, d=8, n_splits=10, pfn_limits=(512, 10))


def _plan(memory=24 * GIB, **cfg):
    kw = {**BIG, **{k: cfg.pop(k) for k in list(cfg) if k in BIG}}
    return plan_tabular(TabularConfig(data="big.csv", **cfg), **kw, memory_bytes=memory)


# ----------------------------------------------------------------- the plan


def test_big_table_plan_picks_the_scalable_forms_and_says_why():
    plan = _plan(budget_minutes=30)
    gp, pfn, nuts = plan.get("gp"), plan.get("pfn"), plan.get("nuts")
    assert gp.form == "sparse" and gp.label == "sparse GP (ARD, VFE, 256 inducing)"
    # O(n M) memory, not the exact GP's 8 x 45,000^2 x 8 bytes = 121 GiB
    assert gp.memory_bytes < 1 * GIB
    assert pfn.form == "subsets" and "mixture of 8 random 512-row contexts" in pfn.label
    assert not nuts.run and "--nuts-max-minutes" in nuts.note and "per split" in nuts.note
    assert plan.n_nuts == 0 and "nuts" not in plan.running
    notes = " ".join(plan.notes)
    assert "sparse GP" in notes and "45000 training rows > --gp-exact-max 2000" in notes
    assert "an approximation" in notes and "NUTS: not run" in notes
    # SVI's time includes the MLP it starts from; the total counts that fit once
    fit = plan.fit_seconds
    assert plan.get("svi").seconds == pytest.approx(fit["svi"] + fit["mlp"])
    assert plan.seconds_for(["mlp", "svi"], 1) == pytest.approx(plan.get("svi").seconds)
    assert plan.total_seconds == pytest.approx(10 * sum(fit[m] for m in plan.running))


def test_over_budget_message_lists_estimates_and_flags_that_fit():
    plan = _plan(budget_minutes=30)
    assert not plan.fits and plan.total_seconds > 30 * 60
    msg = plan.over_budget_message()
    assert "over its budget of 30.0 min (--budget-minutes 30)" in msg
    assert "nothing was fitted" in msg
    for label in ("MLP + fitted noise", "deep ensemble", "sparse GP (ARD, VFE, 256 inducing)"):
        assert label in msg
    assert "--methods " in msg and "--splits " in msg
    # each suggested method/split set really fits the budget by the same model
    line = next(x for x in msg.splitlines() if "--methods " in x)
    kept = line.split("--methods ")[1].split()[0].split(",")
    splits = int(line.split("--splits ")[1].split()[0]) if "--splits" in line else 10
    assert 0 < plan.seconds_for(kept, splits) <= 30 * 60
    assert f"--budget-minutes {math.ceil(plan.total_seconds / 60)}" in msg


def test_dropping_only_gp_or_nuts_is_said_with_their_own_flags():
    # 3,000 rows, 10 splits: the sparse GP is the expensive row at 2,000 inducing inputs
    plan = _plan(n_train=3000, n_test=300, budget_minutes=60, gp_inducing=2000,
                 methods="mlp,gp")  # fmt: skip
    assert not plan.fits
    assert "--no-gp" in plan.over_budget_message()


def test_small_data_keep_the_exact_forms_and_memory_forces_the_sparse_gp():
    small = _plan(n_train=400, n_test=40, budget_minutes=0)
    assert small.fits and small.budget_s is None
    assert (
        small.get("gp").label == "exact GP (ARD)" and small.get("pfn").label == "PFN (bnn-tabular)"
    )
    assert small.get("nuts").run and small.n_nuts == 10
    # 1,500 rows are under --gp-exact-max, but 8 x 1500^2 x 8 bytes = 144 MB > half of 100 MB
    tight = _plan(n_train=1500, n_test=150, memory=100 * 2**20)
    assert tight.get("gp").form == "sparse" and "exceed half the available" in tight.get("gp").note
    # features beyond the PFN's: random feature subsets, stated in the label
    wide = _plan(n_train=300, n_test=30, d=14)
    assert "10 of 14 features" in wide.get("pfn").label
    nopfn = _plan(n_train=300, n_test=30, pfn_limits=None)
    assert not nopfn.get("pfn").run and "no `bnn-tabular` checkpoint" in nopfn.get("pfn").note


def test_unselected_methods_are_a_note_and_cost_nothing():
    plan = _plan(methods="mlp,pfn", budget_minutes=0)
    assert plan.running == ("mlp", "pfn")
    assert plan.notes[0].startswith("not run (--methods/--no-gp/--no-nuts): ensemble, dropout")
    assert plan.total_seconds == pytest.approx(
        10 * (plan.fit_seconds["mlp"] + plan.fit_seconds["pfn"])
    )


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(budget_minutes=-1), "budget-minutes"),
        (dict(nuts_max_minutes=-0.5), "nuts-max-minutes"),
        (dict(gp_inducing=0), "gp-inducing must be >= 1"),
        (dict(gp_exact_max=0), "gp-exact-max must be >= 1"),
        (dict(pfn_subsets=0), "pfn-subsets must be >= 1"),
        (dict(first_split=-1), "first-split must be >= 0"),
    ],
)
def test_bad_scale_options_fail_before_any_work(kw, message):
    with pytest.raises(ValueError, match=message):
        TabularConfig(data="diabetes", **kw)


# ----------------------------------------------------------------- the 50,000-row CSV


def test_fifty_thousand_rows_stop_up_front_with_the_flags(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, 4, generator=g)
    y = x[:, 0] - 0.5 * x[:, 1] + 0.1 * torch.randn(50_000, generator=g)
    lines = "".join(f"{a:.3f},{b:.3f},{c:.3f},{d:.3f},{t:.3f}\n" for (a, b, c, d), t in
                    zip(x.tolist(), y.tolist()))  # fmt: skip
    path = tmp_path / "big.csv"
    path.write_text("a,b,c,d,y\n" + lines)
    out = tmp_path / "o"
    t0 = time.perf_counter()
    code = main(["compare", "--data", str(path), "--y", "y", "--out", str(out), "--no-progress"])
    assert code == 2 and time.perf_counter() - t0 < 120  # seconds, not the hours it would take
    err = capsys.readouterr().err
    assert "pyrobayes compare: error: this run is estimated at" in err
    assert "45000 training rows" in err and "over its budget" in err
    for flag in ("--methods", "--splits", "--budget-minutes", "--mlp-steps"):
        assert flag in err
    assert not out.exists()  # stopped before any fit wrote anything


def test_plan_error_is_a_value_error_for_the_python_api(tmp_path):
    rows = "".join(f"{i},{i % 7},{2 * i + (i % 3)}\n" for i in range(60))
    p = tmp_path / "t.csv"
    p.write_text("a,b,y\n" + rows)
    cfg = TabularConfig(data=str(p), y_col="y", splits=2, budget_minutes=1e-6,
                        out=str(tmp_path / "o"), no_progress=True)  # fmt: skip
    with pytest.raises(PlanError, match="Flags that make it fit"):
        run_tabular(cfg)
    assert issubclass(PlanError, ValueError)


# ----------------------------------------------------------------- the forms, run


def test_job_runs_the_sparse_gp_and_the_pfn_mixture_and_labels_them(tmp_path):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(640, 2, generator=g) * 4 - 2
    y = torch.sin(2 * x[:, 0]) + 0.2 * torch.randn(640, generator=g)
    p = tmp_path / "m.csv"
    p.write_text("a,b,y\n" + "".join(f"{a:.5f},{b:.5f},{t:.5f}\n" for (a, b), t in
                                      zip(x.tolist(), y.tolist())))  # fmt: skip
    cfg = TabularConfig(data=str(p), y_col="y", splits=1, methods="pfn,gp,nuts", gp_steps=60,
                        gp_exact_max=100, gp_inducing=16, pfn_subsets=3, nuts_max_minutes=0,
                        out=str(tmp_path / "o"), no_progress=True)  # fmt: skip
    res = run_tabular(cfg)
    gp_row = "sparse GP (ARD, VFE, 16 inducing)"
    pfn_row = "PFN (bnn-tabular, mixture of 3 random 512-row contexts)"
    assert res["rows"] == {"pfn": pfn_row, "gp": gp_row}
    assert res["table"].methods == (pfn_row, gp_row)  # NUTS: not run, and said why
    assert any(n.startswith("NUTS: not run: estimated") for n in res["notes"])
    assert res["infos"][0]["gp"]["form"] == "sparse"
    # both beat the constant predictor N(mean, sd) of the training targets by a margin
    const = math.log(float(y.std())) + 0.5 * math.log(2 * math.pi * math.e)
    for row in (gp_row, pfn_row):
        assert res["table"].row(row)["nll"] < const - 0.3
    md = res["files"]["md"].read_text()
    assert gp_row in md and "an approximation" in md


def test_pfn_row_on_a_table_wider_than_its_trained_features(tmp_path):
    # wine-quality-red has 11 features, the PFN 1..10: the warm-up call must take the same
    # feature-subset path as the row itself (it raised before)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(80, 12, generator=g)
    y = x[:, 0] - 0.5 * x[:, 3] + 0.3 * torch.randn(80, generator=g)
    cols = [f"f{j}" for j in range(12)]
    rows = "".join(",".join(f"{v:.5f}" for v in r) + f",{t:.5f}\n" for r, t in
                   zip(x.tolist(), y.tolist()))  # fmt: skip
    p = tmp_path / "wide.csv"
    p.write_text(",".join(cols) + ",y\n" + rows)
    cfg = TabularConfig(data=str(p), y_col="y", splits=1, methods="pfn", pfn_subsets=2,
                        out=str(tmp_path / "o"), no_progress=True)  # fmt: skip
    res = run_tabular(cfg)
    (row,) = res["table"].methods
    assert row.startswith("PFN") and math.isfinite(res["table"].row(row)["nll"])


def test_sparse_gp_with_every_row_inducing_is_the_exact_marginal():
    # Xu = X makes Q_nn = K_nn: the VFE bound is the exact log marginal at the same
    # hyperparameters (up to the 1e-6 jitter on K_uu)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 3, generator=g)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(120, generator=g)
    gp = fit_sparse_ard_gp(x, y, num_inducing=500, steps=60)
    assert gp.num_inducing == 120
    exact = gp_log_marginal(x.double(), y.double(), gp.lengthscales, gp.outputscale, gp.noise_std)
    assert gp.elbo == pytest.approx(exact, abs=0.05)
    # a second fit of another shape is independent (nothing in Pyro's global param store)
    other = fit_sparse_ard_gp(torch.randn(50, 5, generator=g), torch.randn(50, generator=g),
                              num_inducing=8, steps=5)  # fmt: skip
    assert other.lengthscales.shape == (5,) and gp.predict(x[:4]).batch_shape == (4,)
    with pytest.raises(ValueError, match="num_inducing >= 1"):
        fit_sparse_ard_gp(x, y, num_inducing=0)
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_sparse_ard_gp(x[:1], y[:1])


def test_pfn_subsets_are_disjoint_training_contexts_of_its_size():
    from pyrobayes.pfn import pretrained

    pfn = pretrained("bnn-tabular")
    calls = []

    class Spy:  # the real PFN, its inputs recorded
        config = pfn.config

        def predict(self, xt, yt, xq):
            calls.append((xt, yt, xq))
            return pfn.predict(xt, yt, xq)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1100, 12, generator=g)
    y = torch.randn(1100, generator=g)
    ppd = pfn_subset_ppd(Spy(), x, y, x[:5], subsets=2, seed=1)
    assert isinstance(ppd, MixturePPD) and ppd.num_components == 2
    ids = []
    for xt, yt, xq in calls:
        assert xt.shape == (512, 10) and xq.shape == (5, 10) and yt.shape == (512,)
        ids.append(set(yt.tolist()))  # distinct random targets name the rows
    assert len(ids[0]) == 512 and ids[0].isdisjoint(
        ids[1]
    )  # disjoint while rows last (1,100 >= 2 x 512)
    assert torch.isfinite(ppd.log_prob(y[:5])).all()
    with pytest.raises(ValueError, match="subsets must be >= 1"):
        pfn_subset_ppd(Spy(), x, y, x[:5], subsets=0)


def test_mixture_ppd_is_the_average_of_its_components():
    a = normal_ppd(torch.tensor([0.0, 1.0]), 1.0)
    b = normal_ppd(torch.tensor([2.0, 1.0]), 2.0)
    mix = MixturePPD([a, b])
    v = torch.tensor([0.5, -1.0])
    expected = torch.log(0.5 * a.log_prob(v).exp() + 0.5 * b.log_prob(v).exp())
    assert torch.allclose(mix.log_prob(v), expected, atol=1e-6)
    assert torch.allclose(mix.cdf(v), 0.5 * (a.cdf(v) + b.cdf(v)))
    # law of total variance: (1 + 4)/2 + spread of the means (1 at point 0, 0 at point 1)
    assert torch.allclose(mix.variance, torch.tensor([3.5, 2.5]))
    lo, hi = mix.interval(0.9)
    assert torch.allclose(mix.cdf(hi) - mix.cdf(lo), torch.full((2,), 0.9), atol=1e-4)
    assert mix.sample((7,)).shape == (7, 2)
    with pytest.raises(ValueError, match="at least one"):
        MixturePPD([])


# ----------------------------------------------------------------- progress in logs


def test_plain_progress_prints_at_least_every_max_gap(monkeypatch):
    import pyrobayes.progress as pr

    monkeypatch.setattr(pr, "MAX_GAP_S", 0.05)
    log = io.StringIO()
    for _ in PlainProgress(range(1000), desc="slow", total=None, unit="it", file=log):
        time.sleep(0.0005)
    # no total: no 10% milestones, yet a line about every 0.05 s of the ~0.5+ s loop
    assert len(log.getvalue().splitlines()) >= 6


def test_heartbeat_names_what_runs_and_stops_with_its_block():
    log = io.StringIO()
    with Heartbeat(every=0.05, file=log) as hb:
        hb.set("split 2: deep ensemble")
        time.sleep(0.3)
    n = len(log.getvalue().splitlines())
    assert n >= 3 and "split 2: deep ensemble (for" in log.getvalue()
    time.sleep(0.15)
    assert len(log.getvalue().splitlines()) == n  # the thread ended with the block
    with pytest.raises(ValueError, match="every must be positive"):
        Heartbeat(every=0)


# ----------------------------------------------------------------- bench_uci


def _bench():
    path = Path(__file__).parent.parent / "benchmarks" / "bench_uci.py"
    spec = importlib.util.spec_from_file_location("bench_uci", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_uci"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_bench_fingerprint_changes_only_with_the_methods_recipe():
    bench = _bench()
    base = TabularConfig(data="diabetes")
    more_svi = TabularConfig(data="diabetes", svi_steps=7)
    other_seed = TabularConfig(data="diabetes", seed=3)
    fp = bench.method_fingerprint
    assert fp("svi", base) != fp("svi", more_svi) and fp("nuts", base) != fp("nuts", more_svi)
    for m in ("mlp", "ensemble", "dropout", "gp", "pfn"):
        assert fp(m, base) == fp(m, more_svi)
        assert fp(m, base) != fp(m, other_seed)  # the seed is every method's
    assert fp("gp", base) != fp("gp", TabularConfig(data="diabetes", gp_inducing=64))
    neutral = TabularConfig(data="x.csv", splits=3, out="elsewhere", no_progress=True)
    assert fp("mlp", base) == fp("mlp", neutral)


def test_bench_resumes_from_its_cache_and_reruns_a_changed_recipe(tmp_path, monkeypatch):
    bench = _bench()
    folder = tmp_path / "toy"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 2, generator=g)
    y = x[:, 0] + 0.3 * torch.randn(80, generator=g)
    (folder / "data.txt").write_text("".join(f"{a} {b} {t}\n" for (a, b), t in
                                             zip(x.tolist(), y.tolist())))  # fmt: skip
    (folder / "index_features.txt").write_text("0\n1\n")
    (folder / "index_target.txt").write_text("2\n")
    for k in range(2):
        test = list(range(8 * k, 8 * k + 8))
        (folder / f"index_train_{k}.txt").write_text(
            "\n".join(str(i) for i in range(80) if i not in test)
        )
        (folder / f"index_test_{k}.txt").write_text("\n".join(map(str, test)))
    calls = []
    real = bench.run_tabular
    monkeypatch.setattr(bench, "run_tabular", lambda cfg: calls.append(cfg) or real(cfg))
    cache = tmp_path / "c.json"
    argv = ["--datasets", "toy", "--splits", "2", "--methods", "mlp,dropout",
            "--data-root", str(tmp_path), "--cache", str(cache), "--no-write",
            "--set", "mlp_steps=30", "--set", "dropout_steps=10", "--set", "dropout_passes=5"]  # fmt: skip
    bench.main(argv)
    assert [(c.first_split, c.methods) for c in calls] == [(0, ("mlp", "dropout")),
                                                          (1, ("mlp", "dropout"))]  # fmt: skip
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 4 and all(e.get("nll") is not None for e in entries.values())
    bench.main(argv)  # everything cached: no run
    assert len(calls) == 2
    bench.main([*argv[:-6], "--set", "mlp_steps=40", *argv[-4:]])  # the MLP's recipe changed
    assert [c.methods for c in calls[2:]] == [("mlp",), ("mlp",)]
    data = json.loads(cache.read_text())
    rows = bench.summary_rows(data, bench.parse_args(argv))
    assert [r[1] for r in rows] == ["MLP + fitted noise", "MC dropout"]
    assert rows[0][4] == "2" and "±" in rows[0][2]
    # --previous: the superseded recipe's rows too, labelled, under the current one
    old_fp = bench.method_fingerprint("mlp", bench._config("toy", 0, ["mlp"], bench.parse_args(
        [*argv[:-6], "--set", "mlp_steps=30", *argv[-4:]]), "unused"))  # fmt: skip
    current = [*argv[:-6], "--set", "mlp_steps=40", *argv[-4:]]
    cur_args = bench.parse_args([*current, "--previous", f"mlp={old_fp}"])
    # every split rerun: the old recipe's row is not shown
    assert [r[1] for r in bench.summary_rows(data, cur_args)] == [
        "MLP + fitted noise",
        "MC dropout",
    ]
    cur_fp = bench.method_fingerprint("mlp", bench._config("toy", 0, ["mlp"], cur_args, "unused"))
    del data["entries"][bench.entry_key("toy", 1, "mlp", cur_fp)]  # a rerun half done
    rows = bench.summary_rows(data, cur_args)
    assert [r[1] for r in rows] == [
        "MLP + fitted noise",
        f"MLP + fitted noise [previous recipe {old_fp}]",
        "MC dropout",
    ]
    assert rows[0][4] == "1" and rows[1][4] == "2" and "superseded" in rows[1][-1]
    with pytest.raises(SystemExit):
        bench.parse_args(["--set", "not_a_field=1"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--previous", "svi"])
