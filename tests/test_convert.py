import pyro
import pytest
import torch
from torch import nn

from pyrobayes import BayesianModel, Categorical, Gaussian, bayesian_sites, to_pyro
from pyrobayes.convert import site_priors
from pyrobayes.infer import forward_draws, sample_prior
from pyrobayes.priors import (
    LayerwiseNormalPrior,
    PretrainedNormalPrior,
    ScaleMixturePrior,
    get_prior,
)


def mlp():
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))


def test_all_parameters_become_sites_and_original_untouched():
    net = mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bnn = to_pyro(net, prior="normal", name="m")
    assert sorted(bayesian_sites(bnn)) == ["m.0.bias", "m.0.weight", "m.2.bias", "m.2.weight"]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not isinstance(net, pyro.nn.PyroModule)
    with pyro.poutine.trace() as tr:
        bnn(torch.randn(5, 3))
    assert {n for n, s in tr.trace.nodes.items() if s["type"] == "sample"} == set(
        bayesian_sites(bnn)
    )


def test_inplace_converts_the_module_itself():
    net = mlp()
    out = to_pyro(net, inplace=True, name="ip")
    assert out is net and isinstance(net, pyro.nn.PyroModule)


def test_include_exclude_and_types():
    bnn = to_pyro(mlp(), include=["2"], name="a")
    assert sorted(bayesian_sites(bnn)) == ["a.2.bias", "a.2.weight"]
    bnn = to_pyro(mlp(), exclude=["*.bias"], name="b")
    assert sorted(bayesian_sites(bnn)) == ["b.0.weight", "b.2.weight"]
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    bnn = to_pyro(net, include_types=nn.LayerNorm, name="c")
    assert sorted(bayesian_sites(bnn)) == ["c.1.bias", "c.1.weight"]


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="matches no parameter"):
        to_pyro(mlp(), include=["classifier"])
    with pytest.raises(ValueError, match="unknown prior 'laplace'"):
        to_pyro(mlp(), prior="laplace")
    with pytest.raises(ValueError, match="positive"):
        get_prior("normal", scale=-1.0)
    with pytest.raises(ValueError, match="no parameter was selected"):
        to_pyro(mlp(), include=["0"], exclude=["0"])


def test_frozen_parameters_stay_frozen_and_deterministic():
    net = mlp()
    net[0].weight.requires_grad_(False)
    bnn = to_pyro(net, name="fz")
    assert "fz.0.weight" not in bayesian_sites(bnn)
    # kept as a constant: not a parameter SVI could train (pyro#3438 would flip requires_grad)
    assert "0.weight" not in dict(bnn.named_parameters())
    assert torch.equal(bnn._modules["0"].weight, net[0].weight)
    bnn2 = to_pyro(net, include_frozen=True, name="fz2")
    assert "fz2.0.weight" in bayesian_sites(bnn2)


def test_two_conversions_do_not_share_parameters():
    net = mlp()
    a = BayesianModel(to_pyro(net, include=["2"]), Gaussian(0.1))
    b = BayesianModel(to_pyro(net, include=["2"]), Gaussian(0.1))
    x = torch.randn(4, 3)
    a(x)
    b(x)
    names = list(pyro.get_param_store().keys())
    assert len(names) == 4 and len(set(names)) == 4  # 0.weight, 0.bias for each model
    with torch.no_grad():
        a.net._modules["0"].weight.add_(1.0)
    assert not torch.equal(a.net._modules["0"].weight, b.net._modules["0"].weight)


def test_priors_have_parameter_shapes_and_follow_dtype():
    net = nn.Linear(4, 3)
    bnn = to_pyro(net, prior=LayerwiseNormalPrior(scale=2.0, bias_scale=0.5), name="lw")
    priors = site_priors(bnn)
    assert priors["lw.weight"].event_shape == (3, 4)
    assert torch.allclose(priors["lw.weight"].base_dist.scale, torch.tensor(1.0))  # 2/sqrt(4)
    assert torch.allclose(priors["lw.bias"].base_dist.scale, torch.tensor(0.5))
    bnn.to(torch.float64)
    assert site_priors(bnn)["lw.weight"].sample().dtype == torch.float64
    centred = site_priors(to_pyro(net, prior=PretrainedNormalPrior(0.1), name="pc"))["pc.weight"]
    assert torch.equal(centred.base_dist.loc, net.weight.detach())


def test_scale_mixture_log_prob_is_the_mixture():
    prior = ScaleMixturePrior(pi=0.25, sigma1=1.0, sigma2=0.1)
    d = prior("w", torch.zeros(5), None)
    v = torch.linspace(-1, 1, 5)
    n1, n2 = torch.distributions.Normal(0, 1.0), torch.distributions.Normal(0, 0.1)
    expected = torch.log(0.25 * n1.log_prob(v).exp() + 0.75 * n2.log_prob(v).exp()).sum()
    assert torch.allclose(d.log_prob(v), expected, atol=1e-5)
    s = d.sample((20000,))
    assert s.shape == (20000, 5)
    assert abs(float(s.var()) - (0.25 * 1 + 0.75 * 0.01)) < 0.02


def test_transformer_encoder_conversion_runs():
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    n_params = len(list(enc.parameters()))
    bnn = to_pyro(enc, prior="pretrained", name="enc")
    assert len(bayesian_sites(bnn)) == n_params
    x = torch.randn(3, 5, 16)
    bnn.eval()
    out = bnn(x)
    assert out.shape == (3, 5, 16) and torch.isfinite(out).all()
    # vectorised evaluation over weight draws matches the deterministic net at its own weights
    enc.eval()
    draws = {
        s: dict(enc.named_parameters())[p[0]].detach()[None] for s, p in bayesian_sites(bnn).items()
    }
    assert torch.allclose(forward_draws(bnn, draws, x)[0], enc(x), atol=1e-5)


def test_tiny_gpt2_with_tied_weights_is_one_site():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    torch.manual_seed(0)
    gpt = transformers.GPT2LMHeadModel(cfg).eval()
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    n_unique = len(list(gpt.parameters()))
    bnn = to_pyro(gpt, prior="pretrained", name="gpt")
    sites = bayesian_sites(bnn)
    assert len(sites) == n_unique
    tied = [paths for paths in sites.values() if len(paths) > 1]
    assert tied == [["transformer.wte.weight", "lm_head.weight"]]
    ids = torch.randint(0, 50, (2, 7))
    with pyro.poutine.trace() as tr:
        logits = bnn(ids).logits
    assert logits.shape == (2, 7, 50)
    wte = tr.trace.nodes["gpt.transformer.wte.weight"]["value"]
    # the LM head used exactly the sampled embedding: logits = h @ wte^T
    assert torch.equal(bnn.lm_head.weight, wte)
    # Conv1D fan-in is its first dimension
    prior = LayerwiseNormalPrior()(
        "weight", gpt.transformer.h[0].attn.c_attn.weight.detach(), gpt.transformer.h[0].attn.c_attn
    )
    assert torch.allclose(prior.base_dist.scale, torch.tensor(32**-0.5))
    # a vectorised forward over two draws of the prior
    draws = sample_prior(bnn, 2)
    out = forward_draws(bnn, draws, ids)
    assert out.shape == (2, 2, 7, 50) and torch.isfinite(out).all()


def test_minilm_selected_layers_and_forward(minilm_path):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        minilm_path, num_labels=2
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(minilm_path)
    before = model.classifier.weight.detach().clone()
    bnn = to_pyro(
        model, prior="pretrained", include=["classifier", "bert.encoder.layer.5"], name="bert"
    )
    sites = bayesian_sites(bnn)
    n_expected = 2 + len(list(model.bert.encoder.layer[5].parameters()))
    assert len(sites) == n_expected
    assert all(p[0].startswith(("classifier", "bert.encoder.layer.5")) for p in sites.values())
    batch = tok(["a fine film", "dreadful service"], return_tensors="pt", padding=True)
    bm = BayesianModel(bnn, Categorical())
    with pyro.poutine.trace() as tr:
        logits = bm(**batch, y=torch.tensor([1, 0]))
    assert logits.shape == (2, 2)
    trace = pyro.poutine.util.prune_subsample_sites(tr.trace)
    latent = {n for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
    assert latent == set(bayesian_sites(bm)) and len(latent) == n_expected
    assert torch.equal(model.classifier.weight, before)


def test_cnn_conversion_and_vectorised_forward():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    bnn = to_pyro(cnn, prior="layerwise", name="cnn")
    assert sorted(bayesian_sites(bnn)) == [
        "cnn.0.bias",
        "cnn.0.weight",
        "cnn.3.bias",
        "cnn.3.weight",
    ]
    # Conv fan-in = in_channels * kernel area = 9
    assert torch.allclose(site_priors(bnn)["cnn.0.weight"].base_dist.scale, torch.tensor(1 / 3))
    x = torch.randn(5, 1, 8, 8)
    draws = sample_prior(bnn, 3)
    out = forward_draws(bnn, draws, x)
    assert out.shape == (3, 5, 3)
    one = {s: v[1] for s, v in draws.items()}
    with torch.no_grad():
        direct = pyro.poutine.condition(bnn, data=one)(x)
    assert torch.allclose(out[1], direct, atol=1e-5)


class _Tied(nn.Module):
    """An embedding shared with the output head, as in GPT-2."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(5, 4)
        self.lm_head = nn.Linear(4, 5, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, ids):
        return self.lm_head(self.wte(ids))


def test_tied_parameter_included_and_excluded_raises_naming_both():
    with pytest.raises(ValueError, match=r"lm_head\.weight.*wte\.weight|wte\.weight.*lm_head"):
        to_pyro(_Tied(), include="lm_head", exclude="wte", name="tied_x")


def test_tied_parameter_included_by_one_name_is_one_site():
    bnn = to_pyro(_Tied(), include="lm_head", name="tied_i")
    sites = bayesian_sites(bnn)
    assert len(sites) == 1
    (paths,) = sites.values()
    assert set(paths) == {"wte.weight", "lm_head.weight"}


def test_include_of_frozen_parameter_mentions_include_frozen():
    net = mlp()
    net[2].requires_grad_(False)
    with pytest.raises(ValueError, match="include_frozen=True"):
        to_pyro(net, include="2.", name="frz")
    bnn = to_pyro(net, include="2.", include_frozen=True, name="frz2")
    assert sorted(bayesian_sites(bnn)) == ["frz2.2.bias", "frz2.2.weight"]


def test_to_bayesian_passes_include_types():
    from pyrobayes import to_bayesian

    net = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(8, 1))
    model, guide = to_bayesian(net, include_types=nn.Linear, likelihood=Gaussian(0.1), name="it")
    assert sorted(bayesian_sites(model)) == ["it.net.2.bias", "it.net.2.weight"]
    guide.setup(torch.randn(3, 1, 6))
    assert guide(torch.randn(3, 1, 6))["it.net.2.weight"].shape == (1, 8)


@pytest.mark.parametrize("model_dtype", [torch.float64, torch.bfloat16])
def test_input_dtype_mismatch_names_both_dtypes(model_dtype):
    model = BayesianModel(to_pyro(mlp().to(model_dtype), name=f"dt{model_dtype}"), Gaussian(0.1))
    with pytest.raises(TypeError, match=rf"torch.float32.*{model_dtype}"):
        model(torch.randn(4, 3))
    assert model(torch.randn(4, 3, dtype=model_dtype)).dtype == model_dtype


@pytest.mark.parametrize("delta", [True, 0.0, -0.1, float("nan"), float("inf")])
def test_to_bayesian_rejects_bad_delta(delta):
    from pyrobayes import to_bayesian

    with pytest.raises(ValueError, match="delta"):
        to_bayesian(mlp(), delta=delta, name="bd")


def test_check_sites_prints_the_difference():
    from pyrobayes.convert import check_sites

    bnn = to_pyro(mlp(), name="cs")
    check_sites(bnn, bayesian_sites(bnn))  # equal: no error
    other = {s.replace("cs.", "zz."): None for s in bayesian_sites(bnn)}
    with pytest.raises(ValueError) as err:
        check_sites(bnn, other, "guide sites")
    msg = str(err.value)
    assert "missing ['cs.0.weight', 'cs.0.bias'" in msg
    assert "unexpected ['zz.0.weight', 'zz.0.bias'" in msg


def test_tiny_gpt2_tied_include_with_exclude_raises():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=30, n_positions=8)
    gpt = transformers.GPT2LMHeadModel(cfg).eval()
    with pytest.raises(ValueError, match=r"lm_head\.weight.*transformer\.wte\.weight.*tied"):
        to_pyro(gpt, include="lm_head", exclude="transformer.wte", name="gptx")
    # Including the head alone makes the shared embedding Bayesian too: one site.
    sites = bayesian_sites(to_pyro(gpt, include="lm_head", name="gpti"))
    assert list(sites.values()) == [["transformer.wte.weight", "lm_head.weight"]]
