"""The classifier's latent logit scale (``Categorical(logit_scale_prior=...)``,
``tabular_classifier_model(..., logit_scale_prior=...)``): the likelihood's densities and
PPD, the PFN prior's labels, the direction of its posterior under NUTS, and the options
that switch it on."""

import argparse
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrobayes.infer import forward_draws
from pyrobayes.infer.nuts.sampler import nuts_ppd
from pyrobayes.likelihoods import Categorical, Gaussian
from pyrobayes.models import tabular_classifier_model
from pyrobayes.models.tabular import (
    TABULAR_CLASSIFICATION,
    logit_scale_prior_from,
    parse_lognormal,
    tabular_logit_scale_prior,
)
from pyrobayes.pfn import TabularBNNClassifierPrior


def test_likelihood_scores_and_predicts_with_the_scaled_logits():
    lik = Categorical(logit_scale_prior=dist.LogNormal(0.0, 1.0))
    assert lik.latent_sites == ("logit_scale",) and lik.latent_scale
    logits, y = torch.randn(6, 4), torch.tensor([0, 3, 1, 2, 2, 0])
    tau = torch.tensor(2.5)
    want = torch.log_softmax(2.5 * logits, -1).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(lik.log_prob(logits, y, logit_scale=tau), want)
    torch.testing.assert_close(lik.log_prob_sum(logits, y, logit_scale=tau), want.sum())
    # the PPD mixes softmax(tau_s f_s) over draws, each draw with its own scale
    draws, taus = torch.randn(3, 6, 4), torch.tensor([0.5, 1.0, 4.0])
    mix = torch.stack([torch.softmax(t * f, -1) for t, f in zip(taus, draws)]).mean(0)
    torch.testing.assert_close(lik.ppd(draws, logit_scale=taus).mean, mix)
    torch.testing.assert_close(lik.ppd_from_draws(draws, {"logit_scale": taus}).mean, mix)
    with pytest.raises(ValueError, match="latent logit scale"):
        lik.log_prob(logits, y)
    with pytest.raises(ValueError, match="lack the likelihood's latent"):
        lik.ppd_from_draws(draws, {})
    with pytest.raises(KeyError, match="no latent site"):
        lik.latent_prior_on("noise_scale", torch.device("cpu"), torch.float32)
    with pytest.raises(KeyError, match="no latent site"):
        Gaussian(noise_prior=dist.LogNormal(0.0, 1.0)).latent_prior_on(
            "logit_scale", torch.device("cpu"), torch.float32
        )


def test_prior_must_be_a_positive_scalar_and_the_plain_likelihood_is_unchanged():
    with pytest.raises(ValueError, match="logit_scale_prior must have positive support"):
        Categorical(logit_scale_prior=dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="logit_scale_prior must be a scalar"):
        Categorical(logit_scale_prior=dist.LogNormal(torch.zeros(2), 1.0))
    with pytest.raises(TypeError, match="logit_scale_prior must be a pyro.distributions"):
        Categorical(logit_scale_prior=3.0)
    plain = Categorical()
    assert plain.latent_sites == () and plain.sample_latents(4) == {}
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    torch.testing.assert_close(
        plain.log_prob(logits, y), torch.log_softmax(logits, -1).gather(1, y[:, None])[:, 0]
    )


def test_model_samples_one_scale_per_run_outside_the_data_plate():
    model = tabular_classifier_model(
        3, 4, name="tau", logit_scale_prior=tabular_logit_scale_prior()
    )
    site = model.likelihood.scale_site
    assert site == "tau.likelihood.logit_scale"
    x, y = torch.randn(9, 3), torch.arange(9) % 4
    tr = pyro.poutine.trace(model).get_trace(x, y=y)
    node = tr.nodes[site]
    assert node["value"].shape == () and not node["cond_indep_stack"]
    # the observed labels are scored with the scaled logits
    f = tr.nodes["_RETURN"]["value"]
    want = torch.distributions.Categorical(logits=node["value"] * f).log_prob(y).sum()
    torch.testing.assert_close(tr.nodes["obs"]["fn"].log_prob(y).sum(), want)


def test_pfn_prior_labels_follow_the_scaled_logits():
    # a logit scale ~ 1000: the labels are the argmax of the logits, draw by draw
    sharp = dist.LogNormal(math.log(1000.0), 1e-3)
    prior = TabularBNNClassifierPrior(max_features=4, max_classes=5, logit_scale_prior=sharp)
    torch.manual_seed(0)
    x, y, latents = prior.sample_with_latents(8, 40, d=3, num_classes=5)
    model = prior.model(3, 5)
    tau = latents.pop(model.likelihood.scale_site)
    assert tau.shape == (8,) and bool(((tau - 1000.0).abs() < 10.0).all())
    logits = forward_draws(model, latents, x, inputs_batched=True)
    assert bool((y.long() == logits.argmax(-1)).all())
    assert prior.describe()["logit_scale_prior"].startswith("LogNormal(loc=6.90")
    # the training sampler: labels in range, one class count per data set
    x, y = prior.sample(16, 50)
    assert bool((y < prior.last_num_classes[:, None]).all())
    # the default is the shipped prior's LogNormal(0, 1); None: tau = 1, as before 5 Dec 2026
    assert (
        TabularBNNClassifierPrior().describe()["logit_scale_prior"] == "LogNormal(loc=0, scale=1)"
    )
    assert "logit_scale_prior" not in TabularBNNClassifierPrior(logit_scale_prior=None).describe()


@pytest.mark.filterwarnings("ignore:NUTS reference NOT converged")
def test_posterior_scale_grows_with_separable_labels_and_shrinks_with_random_ones():
    # the latent scale is what lets the posterior be as sharp as the labels allow: on labels
    # that a line separates its posterior median sits well above the prior's 1, on labels
    # independent of x well below it
    torch.manual_seed(0)
    x = torch.randn(80, 2)
    labels = {
        "separable": (x[:, 0] + x[:, 1] > 0).long(),
        "random": torch.randint(2, (80,)),
    }
    medians = {}
    for name, y in labels.items():
        model = tabular_classifier_model(2, 2, logit_scale_prior=tabular_logit_scale_prior())
        _, info = nuts_ppd(
            model,
            x,
            y,
            x[:4],
            num_warmup=150,
            num_samples=150,
            num_chains=2,
            progress=False,
            seed=0,
            return_mcmc=True,
        )
        medians[name] = float(info.get_samples()[model.likelihood.scale_site].median())
    assert medians["separable"] > 2.0 and medians["random"] < 0.5, medians


def test_options_parse_and_name_bad_values():
    from pyrobayes.jobs.tabular_classification import ClassifyTabularConfig, _prior_mismatch
    from pyrobayes.pfn import pretrained
    from pyrobayes.pfn.train import add_arguments, build_prior

    assert parse_lognormal("0,1") == (0.0, 1.0)
    for bad in ("1", "a,b", "0,0", "0,-1", "nan,1"):
        with pytest.raises(ValueError):
            parse_lognormal(bad)
        with pytest.raises(ValueError):
            logit_scale_prior_from(bad)
    assert logit_scale_prior_from("NONE") is None and logit_scale_prior_from(None) is None
    with pytest.raises(TypeError, match="logit_scale_prior must be"):
        logit_scale_prior_from(1.0)
    # the model's default is the shipped prior, None the plain softmax
    assert tabular_classifier_model(2, 3).likelihood.latent_scale
    assert not tabular_classifier_model(2, 3, logit_scale_prior=None).likelihood.latent_scale
    with pytest.raises(ValueError, match="logit-scale-prior"):
        ClassifyTabularConfig(data="iris", logit_scale_prior="0")
    default = ClassifyTabularConfig(data="iris").classifier_logit_scale_prior()
    assert (float(default.loc), float(default.scale)) == TABULAR_CLASSIFICATION["logit_scale_prior"]
    assert (
        ClassifyTabularConfig(data="iris", logit_scale_prior="none").classifier_logit_scale_prior()
        is None
    )
    # SVI and NUTS share the shipped PFN's prior by default; another one is said
    pfn = pretrained("bnn-tabular-classifier")
    assert pfn.config.prior["logit_scale_prior"] == "LogNormal(loc=0, scale=1)"
    assert _prior_mismatch(ClassifyTabularConfig(data="iris"), pfn) == []
    assert _prior_mismatch(ClassifyTabularConfig(data="iris", logit_scale_prior="0,1"), pfn) == []
    (note,) = _prior_mismatch(ClassifyTabularConfig(data="iris", logit_scale_prior="none"), pfn)
    assert "tau = 1" in note and "LogNormal(loc=0, scale=1)" in note

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--prior", "bnn-tabular-classifier", "--out", "x", "--logit-scale-prior", "0,1"]
    )
    assert build_prior(args).describe()["logit_scale_prior"] == "LogNormal(loc=0, scale=1)"
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--logit-scale-prior", "0,-1"])


def test_fine_tuning_the_shipped_classifier_pfn_on_the_logit_scale_prior(tmp_path):
    """``pfn train --init-from``: the shipped weights start a training on the changed prior;
    the new checkpoint records that prior (not the source's) and where it started."""
    from pyrobayes.pfn import load_checkpoint, pretrained
    from pyrobayes.pfn.checkpoint import read_checkpoint_json
    from pyrobayes.pfn.train import main

    out = tmp_path / "tuned"
    common = ["--prior", "bnn-tabular-classifier", "--max-features", "30", "--max-classes",
              "10", "--logit-scale-prior=-0.5,0.7", "--max-train", "64", "--min-train", "1",
              "--num-queries", "16", "--batch-size", "4", "--d-model", "128", "--layers", "4",
              "--heads", "4", "--d-ff", "256", "--no-progress", "--checkpoint-every", "0"]  # fmt: skip
    args = [*common, "--out", str(out), "--steps", "2", "--lr", "1e-6"]
    assert main([*args, "--init-from", "bnn-tabular-classifier"]) == 0
    tuned, shipped = load_checkpoint(out), pretrained("bnn-tabular-classifier")
    assert tuned.config.prior["logit_scale_prior"] == "LogNormal(loc=-0.5, scale=0.7)"
    assert shipped.config.prior["logit_scale_prior"] == "LogNormal(loc=0, scale=1)"
    info = read_checkpoint_json(out)
    assert info["training"]["train_config"]["init_from"] == "bnn-tabular-classifier"
    # two steps at lr 1e-6 (and its warm-up) leave the weights next to the shipped ones
    a, b = tuned.state_dict(), shipped.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    with pytest.raises(ValueError, match="d_model 128 \\(wanted 64\\)"):
        main([*common, "--d-model", "64", "--out", str(tmp_path / "x"), "--steps", "1",
              "--init-from", "bnn-tabular-classifier"])  # fmt: skip
    assert not (tmp_path / "x.json").exists()  # refused before anything is written
