"""PFN network: attention structure (permutation invariance, query independence),
input handling, a tiny PFN learning a tiny prior, and training resume."""

import argparse
import warnings

import numpy as np
import pytest
import torch

from pyrobayes.pfn import (
    PFN,
    BarDistribution,
    GPPrior,
    PFNConfig,
    TrainConfig,
    load_checkpoint,
    train_pfn,
)
from pyrobayes.pfn import train as train_mod
from pyrobayes.ppd import CategoricalPPD


def _tiny(task="regression", **kw) -> PFN:
    torch.manual_seed(0)
    if task == "regression":
        kw.setdefault("borders", tuple(torch.linspace(-3, 3, 41).tolist()))
    else:
        kw.setdefault("num_classes", 3)
    cfg = PFNConfig(task=task, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_train=20, **kw)
    return PFN(cfg).eval()


class SinePrior:
    """A one-function prior: y = sin(2x) + N(0, 0.1^2). Its PPD ignores the data."""

    num_features, task = 1, "regression"
    x_low, x_high = (-2.0,), (2.0,)

    def describe(self):
        return {"kind": "sine"}

    def sample(self, b, n):
        x = torch.rand(b, n, 1) * 4 - 2
        return x, torch.sin(2 * x[..., 0]) + 0.1 * torch.randn(b, n)


class SignPrior:
    num_features, task = 1, "classification"
    x_low, x_high = (-2.0,), (2.0,)

    def describe(self):
        return {"kind": "sign"}

    def sample(self, b, n):
        x = torch.rand(b, n, 1) * 4 - 2
        return x, (x[..., 0] > 0).float()


def test_permuting_training_points_leaves_predictions_unchanged():
    pfn = _tiny()
    g = torch.Generator().manual_seed(1)
    xt, yt, xq = (
        torch.rand(1, 12, 1, generator=g) * 4 - 2,
        torch.randn(1, 12, generator=g),
        torch.rand(1, 7, 1, generator=g),
    )
    perm = torch.randperm(12, generator=g)
    with torch.no_grad():
        a = pfn(xt, yt, xq)
        b = pfn(xt[:, perm], yt[:, perm], xq)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_each_query_is_independent_of_the_other_queries():
    pfn = _tiny()
    g = torch.Generator().manual_seed(2)
    xt, yt, xq = (
        torch.rand(1, 10, 1, generator=g) * 4 - 2,
        torch.randn(1, 10, generator=g),
        torch.rand(1, 6, 1, generator=g),
    )
    with torch.no_grad():
        full = pfn(xt, yt, xq)
        fewer = pfn(xt, yt, xq[:, [0, 2, 3, 5]])  # queries 1 and 4 removed
        more = pfn(xt, yt, torch.cat([xq, torch.rand(1, 3, 1, generator=g)], 1))
        alone = pfn(xt, yt, xq[:, 3:4])
    torch.testing.assert_close(fewer, full[:, [0, 2, 3, 5]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(more[:, :6], full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[:, 0], full[:, 3], atol=1e-5, rtol=1e-5)
    # but the training data does matter
    with torch.no_grad():
        other = pfn(xt, yt + 1.0, xq)
    assert (other - full).abs().max() > 1e-3


def _masked_reference(pfn: PFN, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """The definition of the PFN's attention pattern: torch's own encoder with a boolean
    mask (True = blocked) in which every token sees the training tokens and a query also
    sees itself."""
    size = tokens.shape[1]
    blocked = torch.ones(size, size, dtype=torch.bool)
    blocked[:, :n] = False
    q = torch.arange(n, size)
    blocked[q, q] = False
    return pfn.encoder(tokens, mask=blocked)


@pytest.mark.parametrize("n", [0, 1, 9])
@pytest.mark.parametrize("training", [False, True])
def test_split_attention_equals_the_masked_encoder(n, training):
    """The encoder the PFN runs (training rows through one unmasked attention, queries
    scoring the training keys and their own) computes torch's masked encoder, values and
    gradients, in eval mode (torch's fused fast path) and in training mode."""
    from pyrobayes.pfn.model import _pfn_encoder

    pfn = _tiny().train(training)
    tokens = torch.randn(3, n + 5, 32, generator=torch.Generator().manual_seed(n))
    a_in, b_in = tokens.clone().requires_grad_(), tokens.clone().requires_grad_()
    with torch.set_grad_enabled(training):  # eval + no grad: torch's fused encoder path
        a, b = _pfn_encoder(pfn.encoder, a_in, n), _masked_reference(pfn, b_in, n)
    torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    if training:
        w = torch.randn_like(a)
        (a * w).sum().backward()
        (b * w).sum().backward()
        torch.testing.assert_close(a_in.grad, b_in.grad, atol=1e-5, rtol=1e-5)


def test_predict_input_formats_and_prior_predictive():
    pfn = _tiny()
    x = np.linspace(-1, 1, 5)
    y = np.sin(x)
    a = pfn.predict(x, y, [0.0, 0.5])
    b = pfn.predict(torch.tensor(x).unsqueeze(-1), torch.tensor(y), torch.tensor([[0.0], [0.5]]))
    assert isinstance(a, BarDistribution) and a.batch_shape == torch.Size([2])
    torch.testing.assert_close(a.logits, b.logits)
    prior = pfn.predict(np.zeros(0), np.zeros(0), [0.0, 0.5])  # n_train = 0
    assert torch.isfinite(prior.mean).all()


def test_predict_rejects_or_warns_on_out_of_domain_inputs():
    pfn = _tiny()
    with pytest.raises(ValueError, match="at most 20"):
        pfn.predict(torch.zeros(21), torch.zeros(21), torch.zeros(2))
    with pytest.raises(ValueError, match="features"):
        pfn.predict(torch.zeros(3, 2), torch.zeros(3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="NaN"):
        pfn.predict(torch.zeros(3), torch.tensor([0.0, float("nan"), 1.0]), torch.zeros(2))
    with pytest.raises(ValueError, match="y_train must have shape"):
        pfn.predict(torch.zeros(3), torch.zeros(4), torch.zeros(2))
    with pytest.warns(UserWarning, match="outside the box"):
        pfn.predict(torch.zeros(3), torch.zeros(3), torch.tensor([3.0]))
    with pytest.raises(ValueError, match="outside the box"):
        pfn.predict(torch.zeros(3), torch.zeros(3), torch.tensor([3.0]), strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pfn.predict(torch.zeros(3), torch.zeros(3), torch.tensor([2.0]))  # on the edge: fine


def test_classification_head_returns_categorical_ppd():
    pfn = _tiny("classification")
    ppd = pfn.predict([0.0, 1.0, -1.0], [0, 2, 1], [0.5, -0.5])
    assert (
        isinstance(ppd, CategoricalPPD)
        and ppd.num_draws == 1
        and ppd.batch_shape == torch.Size([2])
    )
    torch.testing.assert_close(ppd.probs.sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match="labels"):
        pfn.predict([0.0], [3], [0.5])


def test_config_validation():
    with pytest.raises(ValueError, match="unknown task"):
        PFNConfig(task="ranking", borders=(0.0, 1.0, 2.0))
    with pytest.raises(ValueError, match="divisible"):
        PFNConfig(d_model=30, n_heads=4, borders=(0.0, 1.0, 2.0))
    with pytest.raises(ValueError, match="borders"):
        PFNConfig(borders=(0.0, 1.0))
    with pytest.raises(ValueError, match="unknown PFN config keys"):
        PFNConfig.from_dict({"d_model": 32, "colour": "blue"})


def test_tiny_pfn_learns_a_tiny_prior():
    # Start: the bars are spread over the marginal of y (loss ~ +0.8 nats). The PPD of a
    # one-function prior is N(sin(2x), 0.1^2) whose NLL is -0.88; ignoring x would leave
    # the loss near the marginal entropy, so < -0.3 needs the network to have learnt f.
    result = train_pfn(
        SinePrior(),
        TrainConfig(
            steps=250,
            batch_size=16,
            seq_len=20,
            max_train=10,
            d_model=32,
            n_layers=1,
            n_heads=2,
            d_ff=64,
            num_bars=50,
            border_samples=5000,
            lr=3e-3,
            progress=False,
            log_every=50,
            seed=0,
        ),
    )
    assert result.history[0]["loss"] > 0.3
    assert result.final_loss < -0.3
    ppd = result.model.predict([], [], [1.0])
    assert abs(float(ppd.mean[0]) - np.sin(2.0)) < 0.15


def test_tiny_classification_pfn_learns_a_tiny_prior():
    result = train_pfn(
        SignPrior(),
        TrainConfig(
            steps=80,
            batch_size=16,
            seq_len=20,
            max_train=10,
            d_model=32,
            n_layers=1,
            n_heads=2,
            d_ff=64,
            lr=3e-3,
            progress=False,
            log_every=20,
            seed=0,
        ),
    )
    assert result.model.config.num_classes == 2
    assert result.final_loss < 0.1  # log(2) = 0.69 for a network that ignores x
    assert result.model.predict([], [], [1.0]).probs[0, 1] > 0.9


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    kw = dict(
        batch_size=4,
        seq_len=12,
        max_train=8,
        d_model=16,
        n_layers=1,
        n_heads=2,
        d_ff=32,
        num_bars=20,
        border_samples=2000,
        progress=False,
        log_every=5,
        seed=3,
    )
    straight = train_pfn(GPPrior(), TrainConfig(steps=20, **kw)).model
    first = train_pfn(
        GPPrior(),
        TrainConfig(steps=20, time_limit=0.0, checkpoint_every=10, out=str(tmp_path / "r"), **kw),
    )
    assert first.steps == 1  # time limit of 0 stops after one step (with a checkpoint)
    resumed = train_pfn(
        GPPrior(),
        TrainConfig(steps=20, checkpoint_every=10, out=str(tmp_path / "r"), resume=True, **kw),
    )
    assert resumed.steps == 20
    for (name, a), b in zip(straight.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert load_checkpoint(tmp_path / "r").checkpoint_info["training"]["steps"] == 20
    with pytest.raises(ValueError, match="cannot resume"):
        train_pfn(
            GPPrior(lengthscale=1.0),
            TrainConfig(steps=30, out=str(tmp_path / "r"), resume=True, **kw),
        )


def test_a_checkpoint_with_the_stale_tabular_description_still_resumes(tmp_path):
    # bnn-tabular checkpoints written before Dec 2026 describe the weights as N(0, 1/fan_in);
    # the prior was N(0, 1.8^2/fan_in) all along, so such a run resumes on today's prior.
    from pyrobayes.pfn.checkpoint import checkpoint_paths
    from pyrobayes.pfn.priors import LEGACY_MODEL_DESCRIPTIONS, TabularBNNPrior

    kw = dict(batch_size=2, seq_len=12, max_train=8, d_model=16, n_layers=1, n_heads=2,
              d_ff=32, num_bars=20, border_samples=500, progress=False, seed=0,
              out=str(tmp_path / "t"))  # fmt: skip
    prior = TabularBNNPrior(max_features=3)
    assert prior.describe()["model"] == next(iter(LEGACY_MODEL_DESCRIPTIONS.values()))
    train_pfn(prior, TrainConfig(steps=2, time_limit=0.0, checkpoint_every=1, **kw))
    meta = checkpoint_paths(tmp_path / "t")[1]
    text = meta.read_text()
    stale = text.replace("1.8^2/fan_in", "1/fan_in")
    assert stale != text
    meta.write_text(stale)
    assert train_pfn(prior, TrainConfig(steps=2, resume=True, **kw)).steps == 2
    with pytest.raises(ValueError, match="cannot resume"):  # a different prior still refuses
        train_pfn(TabularBNNPrior(max_features=2), TrainConfig(steps=3, resume=True, **kw))


def test_cli_trains_and_writes_a_checkpoint(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser)
    args = parser.parse_args(
        [
            "--prior",
            "gp",
            "--out",
            str(tmp_path / "cli"),
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--seq-len",
            "12",
            "--max-train",
            "8",
            "--d-model",
            "16",
            "--layers",
            "1",
            "--heads",
            "2",
            "--d-ff",
            "16",
            "--bars",
            "20",
            "--border-samples",
            "2000",
            "--no-progress",
        ]
    )
    assert train_mod.run(args) == 0
    pfn = load_checkpoint(tmp_path / "cli")
    assert pfn.config.prior["kind"] == "gp" and pfn.config.max_train == 8
    assert "trained 3 steps" in capsys.readouterr().out
