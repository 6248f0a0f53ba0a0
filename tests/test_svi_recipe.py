"""The SVI recipe of the real-data job (issue 21): options, the choice on training rows only."""

import argparse
import math

import pytest
import torch

import pyrobayes.jobs.tabular_svi as sr
from pyrobayes.jobs.tabular_regression import (
    TabularConfig,
    fit_mlp_heldout,
    make_splits,
    standardise_split,
)
from pyrobayes.jobs.tabular_svi import (
    DEFAULT_DELTAS,
    SVILayers,
    SVIRecipe,
    fit_svi_moped,
    job_svi,
    select_svi_recipe,
    svi_model,
)


def _data(n=80, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.sin(x[:, 0]) + 0.2 * torch.randn(n, generator=g)
    return x, y


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"kl_weight": 0.0}, "kl_weight must be in (0, 1]"),
        ({"kl_weight": 1.5}, "kl_weight must be in (0, 1]"),
        ({"delta": -0.1}, "delta must be positive"),
        ({"delta": float("inf")}, "delta must be positive"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"layers": "first"}, "unknown SVI layers 'first'; valid: all, last"),
        ({"noise_prior_scale": 0.0}, "noise_prior_scale must be positive"),
    ],
)
def test_recipe_bad_options_are_named(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        SVIRecipe(**kw)


def test_last_layer_model_keeps_hidden_layers_fixed():
    x, y = _data()
    mlp, noise, _ = fit_mlp_heldout(x, y, 30, seed=0)
    model = svi_model(mlp, SVILayers.LAST)
    sites = sorted(model.net._pyro_name + "." + k for k in ("4.weight", "4.bias"))
    from pyrobayes.convert import bayesian_sites

    assert sorted(bayesian_sites(model)) == sites
    # the hidden layers are frozen at the MLP's weights: nothing for SVI to move there
    assert not any(p.requires_grad for p in model.parameters())
    # the "all" model is the job's shared model: every layer Bayesian, latent noise
    assert len(bayesian_sites(svi_model(mlp))) == 6 and svi_model(mlp).likelihood.latent_noise


def test_selection_sees_training_rows_only_and_takes_the_lowest_score(monkeypatch):
    x, y = _data()
    seen = []
    real_fit, real_nll, real_mlp = sr.fit_svi_moped, sr.svi_nll, fit_mlp_heldout

    def spy_fit(xf, *a, **kw):
        seen.append(("fit", xf))
        return real_fit(xf, *a, **kw)

    def spy_nll(model, guide, xv, *a, **kw):
        seen.append(("score", xv))
        return real_nll(model, guide, xv, *a, **kw)

    monkeypatch.setattr(sr, "fit_svi_moped", spy_fit)
    monkeypatch.setattr(sr, "svi_nll", spy_nll)
    import pyrobayes.jobs.tabular_regression as tj

    monkeypatch.setattr(
        tj,
        "fit_mlp_heldout",
        lambda xf, *a, **kw: (seen.append(("mlp", xf)), real_mlp(xf, *a, **kw))[1],
    )
    grid = [SVIRecipe(delta=d, steps=10) for d in (0.01, 0.1, 0.3)]
    sel = select_svi_recipe(x, y, grid, val_fraction=0.25, mlp_steps=20, num_samples=10)
    assert [k for k, _ in seen] == ["mlp"] + ["fit", "score"] * 3
    rows = {tuple(r.tolist()) for r in x}
    fit_rows = {tuple(r.tolist()) for r in seen[0][1]}
    val_rows = {tuple(r.tolist()) for r in seen[2][1]}
    assert fit_rows | val_rows == rows and fit_rows.isdisjoint(val_rows)
    assert (sel.n_fit, sel.n_val) == (60, 20) and len(val_rows) == 20
    # the MLP the candidates start from never saw the validation rows either
    for kind, xs in seen:
        assert {tuple(r.tolist()) for r in xs} == (val_rows if kind == "score" else fit_rows)
    assert sel.scores[sel.recipe.label()] == min(sel.scores.values())
    assert set(sel.scores) == {r.label() for r in grid}


def test_job_svi_chooses_then_refits_on_every_training_row(monkeypatch):
    x, y = _data()
    mlp, noise, _ = fit_mlp_heldout(x, y, 30, seed=0)
    sizes = []
    real_fit = sr.fit_svi_moped
    monkeypatch.setattr(
        sr, "fit_svi_moped", lambda xf, *a, **kw: (sizes.append(len(xf)), real_fit(xf, *a, **kw))[1]
    )
    kw = dict(steps=10, mlp_steps=20, num_samples=10)
    model, guide, info = job_svi(x, y, mlp, noise, delta=None, deltas=(0.01, 0.1), extend=0, **kw)
    assert sizes == [64, 64, 80] and info["delta"] in (0.01, 0.1)
    assert set(info["scores"]) == {"0.01", "0.1"} and "16 of 80" in info["chosen_on"]
    assert info["scores"][f"{info['delta']:g}"] == min(info["scores"].values())
    # a given delta (or a single candidate) is used as is: one fit, on every row
    sizes.clear()
    _, guide, info = job_svi(x, y, mlp, noise, delta=0.05, **kw)
    assert sizes == [80] and info == {"chosen_on": "given", "delta": 0.05}
    first = next(iter(guide.scales.parameters()))  # noqa: F841 (the guide was built)


def test_tabular_job_svi_choice_never_sees_test_rows(tmp_path, monkeypatch):
    from pyrobayes.jobs.tabular_regression import TabularConfig, run_tabular

    n = 60
    g = torch.Generator().manual_seed(1)
    a = torch.randn(n, generator=g)
    ids = torch.arange(n, dtype=torch.float64)
    yv = torch.sin(a) + 0.1 * torch.randn(n, generator=g)
    csv = tmp_path / "t.csv"
    csv.write_text(
        "id,a,y\n" + "".join(f"{int(i)},{float(u)},{float(v)}\n" for i, u, v in zip(ids, a, yv))
    )
    seen = []
    real_sel = sr.select_svi_recipe
    monkeypatch.setattr(
        sr, "select_svi_recipe", lambda xs, *ar, **kw: (seen.append(xs), real_sel(xs, *ar, **kw))[1]
    )
    real_fit = sr.fit_svi_moped
    monkeypatch.setattr(
        sr, "fit_svi_moped", lambda xs, *ar, **kw: (seen.append(xs), real_fit(xs, *ar, **kw))[1]
    )
    cfg = TabularConfig(
        data=str(csv),
        y_col="y",
        splits=1,
        methods="svi",
        mlp_steps=20,
        svi_steps=5,
        num_samples=10,
        svi_deltas=(0.01, 0.1),
        out=str(tmp_path / "o"),
        no_progress=True,
    )
    res = run_tabular(cfg)
    tr, te = make_splits(n, 1, cfg.test_fraction, cfg.seed)[0]
    x = torch.stack([ids, a.double()], 1)
    s = standardise_split(x, yv.double(), tr, te)
    train_ids = {round(v, 4) for v in s.x_train[:, 0].tolist()}
    test_ids = {round(v, 4) for v in s.x_test[:, 0].tolist()}
    # select, the two grid fits, any beyond the edge, the final fit
    assert len(seen) >= 4 and train_ids.isdisjoint(test_ids)
    for xs in seen:
        assert {round(v, 4) for v in xs[:, 0].tolist()} <= train_ids
    assert len(seen[0]) == len(tr) == len(seen[-1])
    info = res["infos"][0]["svi"]
    # the grid's deltas, then any beyond its edge; the chosen one scored best
    assert list(info["scores"])[:2] == ["0.01", "0.1"]
    assert f"{info['delta']:g}" == min(info["scores"], key=info["scores"].get)


def test_config_defaults_and_bad_values():
    cfg = TabularConfig(data="diabetes")
    assert cfg.delta is None and cfg.svi_deltas == DEFAULT_DELTAS and cfg.svi_val_fraction == 0.2
    assert TabularConfig(data="diabetes", svi_deltas=[0.1]).svi_deltas == (0.1,)
    for kw, message in [
        ({"svi_deltas": ()}, "svi-deltas must be one or more positive finite numbers"),
        ({"svi_deltas": (0.1, -1.0)}, "svi-deltas must be one or more positive finite numbers"),
        ({"svi_val_fraction": 1.0}, r"svi-val-fraction must be in \(0, 1\)"),
        ({"delta": 0.0}, "svi-lr and delta must be positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            TabularConfig(data="diabetes", **kw)


def test_cli_delta_default_per_job():
    from pyrobayes.jobs.demo_1d import CompareConfig, add_arguments
    from pyrobayes.jobs.tabular_regression import config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    # --data: delta left to the choice on training rows; a given one is kept
    cfg = config_from_args(TabularConfig, p.parse_args(["--data", "diabetes"]))
    assert cfg.delta is None and cfg.svi_deltas == DEFAULT_DELTAS
    args = p.parse_args(["--data", "diabetes", "--delta", "0.05", "--svi-deltas", "0.1", "0.2"])
    cfg = config_from_args(TabularConfig, args)
    assert cfg.delta == 0.05 and cfg.svi_deltas == (0.1, 0.2)
    # the 1-D demo keeps its own default
    assert CompareConfig().delta == 0.1 and p.parse_args([]).delta is None


def test_fit_svi_moped_tempered_and_last_layer_run():
    x, y = _data()
    mlp, noise, _ = fit_mlp_heldout(x, y, 30, seed=0)
    model, guide = fit_svi_moped(x, y, mlp, noise, SVIRecipe(kl_weight=0.1, layers="last", steps=5))
    nll = sr.svi_nll(model, guide, x, y, 10)
    assert torch.isfinite(torch.tensor(nll))


def test_shared_flags_leave_each_job_its_own_defaults():
    # compare's three jobs share flags registered once; an unset one must not carry the
    # 1-D demo's budget (NUTS 100/150) into the real-data jobs (200/200) or their delta
    from pyrobayes.jobs.demo_1d import CompareConfig, add_arguments
    from pyrobayes.jobs.tabular_classification import ClassifyTabularConfig
    from pyrobayes.jobs.tabular_regression import config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--data", "iris"])
    for cls in (TabularConfig, ClassifyTabularConfig):
        cfg = config_from_args(cls, args)
        assert (cfg.nuts_warmup, cfg.nuts_samples) == (cls.nuts_warmup, cls.nuts_samples)
        assert (cfg.nuts_warmup, cfg.nuts_samples) == (200, 200)
    assert config_from_args(ClassifyTabularConfig, args).delta == ClassifyTabularConfig.delta
    given = config_from_args(TabularConfig, p.parse_args(["--data", "x", "--nuts-warmup", "7"]))
    assert given.nuts_warmup == 7
    assert (CompareConfig.nuts_warmup, CompareConfig.nuts_samples) == (100, 150)


def _fake_scores(monkeypatch, best_delta: float) -> list[float]:
    """Replace the SVI fit and its score by a convex function of log(delta) with its minimum
    at ``best_delta``; returns the list of deltas fitted, in order."""
    fitted: list[float] = []

    def fake_fit(x, y, mlp, noise, recipe, seed=0, progress=False):
        fitted.append(recipe.delta)
        return None, recipe

    def fake_nll(model, recipe, x, y, num_samples):
        return (math.log(recipe.delta) - math.log(best_delta)) ** 2

    monkeypatch.setattr(sr, "fit_svi_moped", fake_fit)
    monkeypatch.setattr(sr, "svi_nll", fake_nll)
    return fitted


@pytest.mark.parametrize(
    "best_delta, chosen, extra",
    [
        (0.0003, 0.0003, [0.003 / 10**0.5, 0.0003]),  # the smallest wins: two steps down
        (1e-6, 0.0003, [0.003 / 10**0.5, 0.0003]),  # ... and no more than ``extend``
        (0.03, 0.03, []),  # an interior winner: the grid was wide enough
        (0.2, 0.1 * 10**0.5, [0.1 * 10**0.5, 1.0]),  # largest wins; the 2nd step is worse
    ],
)
def test_delta_choice_extends_past_the_winning_edge(monkeypatch, best_delta, chosen, extra):
    fitted = _fake_scores(monkeypatch, best_delta)
    x, y = _data()
    grid = [SVIRecipe(delta=d, steps=3) for d in DEFAULT_DELTAS]
    sel = sr.select_svi_recipe(x, y, grid, mlp_steps=10, num_samples=5, extend=2)
    assert sel.recipe.delta == pytest.approx(chosen)
    assert fitted[: len(grid)] == list(DEFAULT_DELTAS)
    assert fitted[len(grid) :] == pytest.approx(extra)
    assert [r.delta for r in sel.tried] == pytest.approx(fitted)
    # extend=0: the grid alone
    fitted.clear()
    sel = sr.select_svi_recipe(x, y, grid, mlp_steps=10, num_samples=5, extend=0)
    assert fitted == list(DEFAULT_DELTAS) and sel.recipe.delta in DEFAULT_DELTAS


def test_svi_fits_decay_the_step_size_by_default(monkeypatch):
    """The recipe's step size decays to 0 (cosine) unless told otherwise: chosen on inner
    validation rows (benchmarks/RESULTS.md, "SVI recipe: a decaying step size"), it ends each
    fit at an average of its last iterates instead of one noisy single-sample step."""
    import pyrobayes.infer as infer
    from pyrobayes.models.mlp import MLP

    assert (
        SVIRecipe().lr_schedule == "cosine"
        and TabularConfig(data="diabetes").svi_lr_schedule == "cosine"
    )
    assert SVIRecipe(lr_schedule="constant").label().endswith(",lr-constant")
    with pytest.raises(ValueError, match="unknown SVI lr_schedule 'linear'"):
        SVIRecipe(lr_schedule="linear")
    with pytest.raises(ValueError, match="svi-lr-schedule"):
        TabularConfig(data="diabetes", svi_lr_schedule="step-ish")
    seen = []
    real_fit = infer.fit
    monkeypatch.setattr(
        infer, "fit", lambda *a, **kw: (seen.append(kw["lr_schedule"]), real_fit(*a, **kw))[1]
    )
    x, y = torch.randn(20, 2), torch.randn(20)
    for schedule in ("cosine", "constant"):
        sr.fit_svi_moped(
            x, y, MLP(2, (8,), 1, "tanh"), 0.5, SVIRecipe(steps=2, lr_schedule=schedule)
        )
    assert seen == ["cosine", "constant"]
