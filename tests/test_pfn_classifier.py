"""The tabular classification PFN: its prior over data sets (variable d and C, random
relabelling), the Categorical head with per-dataset class counts, exact relabelling
equivariance of ``predict``, checkpoints, the ``pfn train`` command and exact resume, and
a CPU smoke training that beats the label-frequency baseline."""

import argparse
import math

import pytest
import torch

from pyrobayes.pfn import (
    PFN,
    PFNConfig,
    TabularBNNClassifierPrior,
    TrainConfig,
    load_checkpoint,
    pretrained,
    save_checkpoint,
    standardise_split,
    train_pfn,
)
from pyrobayes.pfn.pretrained import CHECKPOINT_DIR, PLANNED
from pyrobayes.pfn.train import add_arguments, build_prior, run
from pyrobayes.ppd import CategoricalPPD


def _pfn(max_features: int = 6, max_classes: int = 5, seed: int = 0) -> PFN:
    torch.manual_seed(seed)
    cfg = PFNConfig(
        num_features=max_features,
        task="classification",
        num_classes=max_classes,
        input_mode="tabular",
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=64,
        max_train=64,
        x_low=(-6.0,) * max_features,
        x_high=(6.0,) * max_features,
    )
    return PFN(cfg).eval()


# -- the prior over data sets -----------------------------------------------------------


def test_prior_varies_d_and_c_and_labels_stay_below_c():
    torch.manual_seed(0)
    prior = TabularBNNClassifierPrior(max_features=6, max_classes=5)
    ds, cs = set(), set()
    for _ in range(40):
        x, y = prior.sample(16, 40)
        counts = prior.last_num_classes
        ds.add(x.shape[-1])
        cs.update(counts.tolist())
        assert y.shape == (16, 40) and counts.shape == (16,)
        assert torch.equal(y, y.round()) and bool((y >= 0).all())
        assert bool((y < counts[:, None]).all())
        # features standardised per data set (the regression prior's features)
        assert torch.allclose(x.mean(1), torch.zeros(16, x.shape[-1]), atol=1e-5)
    assert ds == set(range(1, 7)) and cs == set(range(2, 6))
    with pytest.raises(ValueError, match="min_classes"):
        TabularBNNClassifierPrior(min_classes=1)


def test_relabelling_makes_the_majority_class_uniform(monkeypatch):
    # a network that always prefers its output 0: without relabelling every label would be
    # 0; with a uniform permutation per data set the label is uniform on 0..C-1
    import pyrobayes.infer

    def biased(model, draws, x, inputs_batched):
        out = torch.zeros(*x.shape[:2], 4)
        out[..., 0] = 50.0
        return out

    monkeypatch.setattr(pyrobayes.infer, "forward_draws", biased)
    torch.manual_seed(1)
    # tau = 1: a latent logit scale could shrink the 50-nat margin towards a coin flip
    prior = TabularBNNClassifierPrior(
        max_features=2, min_classes=4, max_classes=4, logit_scale_prior=None
    )
    _, y = prior.sample(4000, 5)
    assert bool((y == y[:, :1]).all())  # one label per data set, as the network says
    freq = torch.bincount(y[:, 0].long(), minlength=4).float()
    # multinomial(4000, 1/4): sd sqrt(4000 * 1/4 * 3/4) = 27.4 per class
    assert bool(((freq - 1000).abs() < 4 * 27.4).all()), freq


def test_prior_on_a_device_draws_from_a_seed_off_the_cpu_rng():
    prior = TabularBNNClassifierPrior(max_features=4, max_classes=3, device="cpu")
    torch.manual_seed(0)
    x1, y1 = prior.sample(5, 12)
    after = torch.get_rng_state()
    torch.manual_seed(0)
    torch.randint(2**62, ())  # the one draw a call takes from the CPU RNG
    assert torch.equal(torch.get_rng_state(), after)
    torch.manual_seed(0)
    x2, y2 = prior.sample(5, 12)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert bool((y1 < prior.last_num_classes[:, None]).all())


def test_sample_with_latents_and_describe():
    prior = TabularBNNClassifierPrior()
    x, y, latents = prior.sample_with_latents(3, 25, d=4, num_classes=3)
    assert x.shape == (3, 25, 4) and y.shape == (3, 25) and int(y.max()) < 3
    from pyrobayes.infer import sample_prior

    model = prior.model(4, 3)
    # every weight site, and the latent logit scale of the shipped prior (one per data set)
    assert set(latents) == {*sample_prior(model, 1), model.likelihood.scale_site}
    assert latents[model.likelihood.scale_site].shape == (3,)
    last = [k for k in latents if k.endswith("net.4.weight")]
    assert len(last) == 1 and latents[last[0]].shape == (3, 3, 50)
    desc = prior.describe()
    assert desc["kind"] == "bnn-tabular-classifier" and desc["max_features"] == 30
    with pytest.raises(ValueError, match="num_classes"):
        prior.sample_with_latents(1, 5, d=2, num_classes=11)


# -- the network and predict ------------------------------------------------------------


def test_forward_masks_the_classes_a_data_set_does_not_have():
    pfn = _pfn()
    x, y = torch.randn(3, 10, 4), torch.randint(0, 2, (3, 10)).float()
    logits = pfn(x, y, torch.randn(3, 5, 4), torch.tensor([2, 3, 5]))
    assert logits.shape == (3, 5, 5)
    assert bool(torch.isinf(logits[0, :, 2:]).all()) and bool(
        torch.isfinite(logits[0, :, :2]).all()
    )
    assert bool(torch.isinf(logits[1, :, 3:]).all()) and bool(torch.isfinite(logits[2]).all())
    # the class count is an input: the same data with C = 2 vs 3 give different logits
    assert not torch.allclose(
        logits[0, :, :2], pfn(x[:1], y[:1], torch.randn(1, 5, 4), 3)[0, :, :2]
    )
    with pytest.raises(ValueError, match="2..5 classes"):
        pfn(x, y, torch.randn(3, 5, 4), 6)


@pytest.mark.parametrize("num_classes", [None, 5])
def test_permuting_class_ids_permutes_the_probabilities_exactly(num_classes):
    pfn = _pfn()
    g = torch.Generator().manual_seed(0)
    x, xq = torch.randn(30, 4, generator=g), torch.randn(7, 4, generator=g)
    y = torch.randint(0, 3, (30,), generator=g)  # classes 0..2 present (3, 4 absent if C=5)
    C = num_classes or 3
    p = pfn.predict(x, y, xq, num_classes=num_classes)
    assert isinstance(p, CategoricalPPD) and p.probs.shape == (7, C)
    torch.testing.assert_close(p.probs.sum(-1), torch.ones(7))
    for seed in range(3):
        sigma = torch.randperm(C, generator=torch.Generator().manual_seed(seed + 10))
        q = pfn.predict(x, sigma[y], xq, num_classes=num_classes)
        # class k is called sigma[k] now: q[:, sigma[k]] == p[:, k]; the network saw
        # identical inputs, only CategoricalPPD's renormalising sum runs in another order
        torch.testing.assert_close(q.probs[:, sigma], p.probs, rtol=1e-6, atol=1e-7)
    if num_classes == 5:  # absent classes are exchangeable: equal probabilities
        torch.testing.assert_close(p.probs[:, 3], p.probs[:, 4], rtol=0, atol=0)
    # row order: attention is a sum, so equal up to float rounding
    rows = torch.randperm(30, generator=g)
    shuffled = pfn.predict(x[rows], y[rows], xq, num_classes=num_classes)
    torch.testing.assert_close(shuffled.probs, p.probs, atol=1e-5, rtol=1e-5)


def test_predict_edge_cases_and_errors():
    pfn = _pfn()
    xq = torch.randn(4, 2)
    # no training rows: all classes absent, so exactly uniform (the prior predictive)
    p0 = pfn.predict(torch.zeros(0, 2), torch.zeros(0), xq, num_classes=4)
    torch.testing.assert_close(p0.probs, torch.full((4, 4), 0.25))
    x, y = torch.randn(10, 2), torch.tensor([0, 1] * 5)
    assert pfn.predict(x, y, xq, class_permutations=1).probs.shape == (4, 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        pfn.predict(x, y + 1, xq, num_classes=2)
    with pytest.raises(ValueError, match="2..5 classes"):
        pfn.predict(x, y, xq, num_classes=6)
    with pytest.raises(ValueError, match="integer labels"):
        pfn.predict(x, y + 0.5, xq)
    with pytest.raises(ValueError, match="1..6 features"):
        pfn.predict(torch.randn(10, 7), y, torch.randn(2, 7))
    with pytest.raises(ValueError, match="class_permutations"):
        pfn.predict(x, y, xq, class_permutations=0)


def test_checkpoint_round_trip(tmp_path):
    pfn = _pfn()
    x, y, xq = torch.randn(12, 3), torch.randint(0, 4, (12,)), torch.randn(5, 3)
    save_checkpoint(pfn, tmp_path / "clf")
    loaded = load_checkpoint(tmp_path / "clf")
    assert loaded.config == pfn.config and loaded.tabular_classes
    assert torch.equal(loaded.predict(x, y, xq).probs, pfn.predict(x, y, xq).probs)


def test_pretrained_classifier_is_shipped_or_a_clear_not_shipped_error():
    if "bnn-tabular-classifier" in PLANNED:
        with pytest.raises(FileNotFoundError, match="not shipped yet.*train_classifier_pfn.sh"):
            pretrained("bnn-tabular-classifier")
    else:  # shipped: what the issue asks of it (1..>=20 features, 2..10 classes, >= 1000 rows)
        pfn = pretrained("bnn-tabular-classifier")
        c = pfn.config
        assert pfn.tabular_classes and c.num_features >= 20 and c.num_classes == 10
        assert c.max_train >= 1000 and c.prior["kind"] == "bnn-tabular-classifier"
        weights = CHECKPOINT_DIR / "bnn-tabular-classifier.safetensors"
        assert weights.stat().st_size <= 25 * 2**20


@pytest.mark.skipif(
    "bnn-tabular-classifier" in PLANNED, reason="the classification PFN is not shipped yet"
)
def test_shipped_classifier_beats_the_label_frequencies_on_its_prior():
    # 64 fresh prior data sets (d <= 10, C <= 5, 50 training rows): a trained PFN reads the
    # features (the prior's features carry 0.26-0.31 nats for binary tasks,
    # benchmarks/probe_classifier_prior.py); an untrained one only matches the frequencies
    pfn = pretrained("bnn-tabular-classifier")
    prior = TabularBNNClassifierPrior(max_features=10, max_classes=5)
    pfn_nll, freq_nll = _heldout_losses(pfn, prior, sets=64, n=50, m=50)
    assert float((freq_nll - pfn_nll).mean()) > 0.1


# -- training ---------------------------------------------------------------------------


def _args(out, *extra):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(
        ["--prior", "bnn-tabular-classifier", "--out", str(out), "--batch-size", "4",
         "--max-train", "20", "--min-train", "1", "--num-queries", "8", "--d-model", "16",
         "--layers", "1", "--heads", "2", "--d-ff", "32", "--max-features", "5",
         "--max-classes", "4", "--checkpoint-every", "2", "--log-every", "1", "--no-progress",
         *extra]
    )  # fmt: skip


@pytest.mark.parametrize("device", [[], ["--device", "cpu"]], ids=["default", "prior-on-device"])
def test_cli_prior_choice_and_exact_resume(tmp_path, device):
    # with --device the prior draws where training runs, from a seed off the CPU RNG
    prior = build_prior(_args(tmp_path / "a", "--steps", "4", *device))
    assert isinstance(prior, TabularBNNClassifierPrior) and prior.max_classes == 4
    assert prior.device == (torch.device("cpu") if device else None)
    assert run(_args(tmp_path / "a", "--steps", "4", *device)) == 0
    # the same 4 steps in two runs: the second resumes where the first stopped
    assert run(_args(tmp_path / "b", "--steps", "4", "--time-limit", "0", *device)) == 0
    first = load_checkpoint(tmp_path / "b")
    assert first.checkpoint_info["training"]["steps"] < 4
    assert run(_args(tmp_path / "b", "--steps", "4", "--resume", *device)) == 0
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a.config.task == "classification" and a.config.num_classes == 4
    assert a.config.input_mode == "tabular" and a.config.max_train == 20
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(wa, wb), name


def _heldout_losses(pfn: PFN, prior, sets: int = 256, n: int = 30, m: int = 30):
    """Mean held-out NLL of the PFN and of the Laplace-smoothed label frequencies of each
    data set's training rows, (count_k + 1) / (n + C), on the same prior data sets."""
    torch.manual_seed(123)
    pfn_nll, freq_nll = [], []
    for _ in range(sets // 16):
        x, y = prior.sample(16, n + m)
        C = prior.last_num_classes
        xt, _, xq, *_ = standardise_split(x[:, :n], y[:, :n], x[:, n:])
        with torch.no_grad():
            pfn_nll.append(pfn.loss(pfn(xt, y[:, :n], xq, C), y[:, n:]).mean(1))
        counts = torch.nn.functional.one_hot(y[:, :n].long(), prior.max_classes).sum(1)
        probs = (counts + 1) / (n + C[:, None])
        freq_nll.append(-probs.gather(1, y[:, n:].long()).log().mean(1))
    return torch.cat(pfn_nll), torch.cat(freq_nll)


@pytest.mark.slow
def test_cpu_smoke_training_beats_the_label_frequency_baseline():
    # 300 steps of a tiny PFN (~20 s on one thread); measured: held-out NLL 0.74 vs 0.93
    torch.manual_seed(0)
    prior = TabularBNNClassifierPrior(max_features=5, max_classes=4)
    cfg = TrainConfig(
        steps=300, batch_size=16, seq_len=60, min_train=5, max_train=40, d_model=32,
        n_layers=2, n_heads=4, d_ff=64, lr=3e-3, log_every=50, progress=False,
    )  # fmt: skip
    result = train_pfn(prior, cfg)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    pfn_nll, freq_nll = _heldout_losses(result.model, prior)
    gap = freq_nll - pfn_nll  # paired over the same 256 data sets
    se = gap.std() / math.sqrt(len(gap))
    assert float(gap.mean()) > 0.05 and float(gap.mean()) > 4 * float(se), (gap.mean(), se)
