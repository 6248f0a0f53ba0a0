"""Hugging Face helpers on the real shipped MiniLM-L6 (no network)."""

import copy
import math

import datasets
import pytest
import torch

from pyrobayes._pyro_compat import loc_and_scale
from pyrobayes.bayesian_model import BayesianModel
from pyrobayes.convert import bayesian_sites, pretrained_values, to_pyro
from pyrobayes.data import DataUnavailableError, tokenize
from pyrobayes.infer import forward_draws, sample_prior
from pyrobayes.models.hf import (
    bayesian_include,
    encoder_layers,
    fine_tune,
    head_modules,
    load_sequence_classifier,
    predict_logits,
)

SENTENCES = ["Lovely food.", "Awful service, never again.", "Great film!", "Boring and too long."]


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    return load_sequence_classifier(num_labels=2)


@pytest.fixture(scope="module")
def encoded(minilm):
    _, tok = minilm
    return tokenize(
        datasets.Dataset.from_dict({"sentence": SENTENCES, "label": [1, 0, 1, 0]}),
        tok,
        max_length=16,
    )


def _params_under(model, patterns):
    return {
        n
        for n, _ in model.named_parameters()
        if any(n == p or n.startswith(p + ".") for p in patterns)
    }


def test_default_model_is_the_shipped_minilm(minilm, minilm_path):
    model, tok = minilm
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert model.config.num_labels == 2 and not model.training
    assert 22_000_000 < sum(p.numel() for p in model.parameters()) < 23_000_000
    assert tok("hello world")["input_ids"][0] == tok.cls_token_id
    # Loading from the folder explicitly gives the same pretrained encoder.
    again, _ = load_sequence_classifier(minilm_path, num_labels=3)
    assert again.config.num_labels == 3
    assert torch.equal(
        again.bert.encoder.layer[5].output.dense.weight,
        model.bert.encoder.layer[5].output.dense.weight,
    )


def test_uncached_hub_name_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataUnavailableError, match="not in the local Hugging Face cache"):
        load_sequence_classifier("pyrobayes-test/no-such-model")
    with pytest.raises(FileNotFoundError):
        load_sequence_classifier(str(tmp_path / "missing"))


def test_parts_by_layer(minilm):
    model, _ = minilm
    assert encoder_layers(model) == [f"bert.encoder.layer.{i}" for i in range(6)]
    assert head_modules(model) == ["bert.pooler.dense", "classifier"]
    assert bayesian_include(model) == ["bert.encoder.layer.5", "bert.pooler.dense", "classifier"]
    assert bayesian_include(model, "head") == ["bert.pooler.dense", "classifier"]
    assert bayesian_include(model, "last:0") == bayesian_include(model, "head")
    assert bayesian_include(model, "last:3")[:3] == [f"bert.encoder.layer.{i}" for i in (3, 4, 5)]
    assert _params_under(model, bayesian_include(model, "all")) == {
        n for n, _ in model.named_parameters()
    }
    with pytest.raises(
        ValueError, match="unknown Bayesian part .*; valid: head, head\\+last, all, last:K"
    ):
        bayesian_include(model, "tail")
    with pytest.raises(ValueError, match="only 6"):
        bayesian_include(model, "last:7")


@pytest.mark.parametrize("part", ["head", "head+last"])
def test_to_pyro_makes_exactly_the_chosen_part_bayesian(minilm, encoded, part):
    model, _ = minilm
    include = bayesian_include(model, part)
    bnn = to_pyro(model, prior="pretrained", include=include, name=f"minilm_{part}")
    sites = bayesian_sites(bnn)
    made = {p for paths in sites.values() for p in paths}
    expected = _params_under(model, include)
    assert made == expected
    n_expected = 4 + (
        16 if part == "head+last" else 0
    )  # 2 linear layers; a BERT layer has 16 tensors
    assert len(sites) == n_expected
    # Everything else stayed an ordinary (deterministic) parameter of the converted copy.
    rest = {n for n, _ in bnn.named_parameters()}
    assert rest == {n for n, _ in model.named_parameters()} - expected
    # The converted network runs as a Pyro model and over a stack of weight draws.
    bm = BayesianModel(bnn, "categorical")
    batch = encoded[:]
    kw = {k: batch[k] for k in ("attention_mask", "token_type_ids")}
    with torch.no_grad():
        logits = bm(batch["input_ids"], **kw)
        draws = sample_prior(bm, 2)
        out = forward_draws(bm, draws, batch["input_ids"], **kw)
    assert logits.shape == (4, 2) and out.shape == (2, 4, 2)
    assert torch.isfinite(out).all() and not torch.allclose(out[0], out[1])


def test_fine_tune_learns_and_predicts(minilm, encoded):
    torch.manual_seed(0)
    model = copy.deepcopy(minilm[0])
    # Train only the head and the last layer: the same code path, a fraction of the time.
    trainable = _params_under(model, bayesian_include(model, "head+last"))
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    frozen_before = model.bert.encoder.layer[0].output.dense.weight.clone()
    before = predict_logits(model, encoded)
    hist = fine_tune(model, encoded, epochs=6, lr=3e-4, batch_size=4, progress=False)
    after = predict_logits(model, encoded)
    assert len(hist["loss"]) == 6 and all(t > 0 for t in hist["step_time"])
    assert not model.training
    assert torch.equal(model.bert.encoder.layer[0].output.dense.weight, frozen_before)
    # Four sentences, six full-batch steps: the training loss must fall.
    labels = encoded[:]["label"]
    ce = torch.nn.functional.cross_entropy
    assert float(ce(after, labels)) < float(ce(before, labels))
    with pytest.raises(ValueError, match="'label' column"):
        fine_tune(model, encoded.remove_columns("label"), epochs=1)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A tiny BERT saved as a checkpoint: ``from_pretrained`` is what switches on
    transformers 5's hub kernels (``use_kernels``), which ``train()`` then re-applies."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=3,
    )
    path = tmp_path_factory.mktemp("tiny_bert")
    BertForSequenceClassification(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "no-kernels"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fully_bayesian_hf_model_reports_device_dtype_and_switches_mode(
    tiny_bert_dir, monkeypatch, kernels, dtype
):
    import transformers.modeling_utils as mu
    from transformers import BertForSequenceClassification

    if kernels and not getattr(mu, "is_kernels_available", lambda: False)():
        pytest.skip(
            "the kernels package is not installed (or this transformers has no hub kernels)"
        )
    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir).to(dtype)
    if not kernels:  # train() as in a transformers without the `kernels` package
        monkeypatch.setattr(mu, "is_kernels_available", lambda: False, raising=False)
    else:
        assert model.use_kernels  # so that train() below really goes through kernelize
    bnn = to_pyro(model, name=f"tiny_{kernels}_{dtype}".replace(".", "_"))
    assert list(bnn.parameters()) == []  # every weight is a PyroSample site
    for m in (bnn, bnn.bert):  # both are PreTrainedModels
        assert m.device == torch.device("cpu") and m.dtype == dtype
    assert bnn.train() is bnn and bnn.training and bnn.bert.encoder.layer[1].training
    if kernels:
        assert bnn.kernels_mode.name == "TRAINING"
    assert bnn.eval() is bnn and not bnn.training and not bnn.bert.encoder.layer[1].training
    if kernels:
        assert bnn.kernels_mode.name == "INFERENCE"
    ids = torch.tensor([[1, 5, 7, 2]])
    assert bnn(input_ids=ids).logits.dtype == dtype


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_lora_wrapped_minilm_with_bayesian_lora_a_fits_and_predicts(minilm, encoded):
    """peft's LoRA layers and LoraModel mix in abc.ABC and its ModulesToSaveWrapper (the
    classifier here) answers unknown attributes from ``_modules``: both must convert."""
    peft = pytest.importorskip("peft")
    from pyrobayes.jobs.classify.result import bayesianize_and_fit
    from pyrobayes.jobs.classify.text import bayesian_text_ppd

    torch.manual_seed(0)
    config = peft.LoraConfig(
        r=2,
        target_modules=["query", "value"],
        layers_to_transform=[5],
        task_type="SEQ_CLS",  # wraps the classifier in a ModulesToSaveWrapper
        init_lora_weights=False,  # lora_B random, not 0: lora_A then changes the output
    )
    lora = peft.get_peft_model(copy.deepcopy(minilm[0]), config)
    loader = torch.utils.data.DataLoader(encoded, batch_size=4)
    model, guide, history, _ = bayesianize_and_fit(
        lora, loader, delta=0.1, prior_scale=1.0, name="lora", svi_epochs=3, svi_lr=0.01,
        svi_loss="trace_elbo", seed=0, progress=False, include="*lora_A*",
    )  # fmt: skip
    paths = sorted(p for ps in bayesian_sites(model).values() for p in ps)
    assert paths == [
        f"base_model.model.bert.encoder.layer.5.attention.self.{m}.lora_A.default.weight"
        for m in ("query", "value")
    ]
    assert len(history) == 3 and all(math.isfinite(h["loss"]) for h in history)
    for site, start in pretrained_values(model).items():  # SVI moved the LoRA means
        loc, _ = loc_and_scale(guide, site)
        assert loc.shape == start.shape and not torch.allclose(loc, start)
    ppd = bayesian_text_ppd(model, guide, encoded, num_samples=6)
    assert ppd.probs.shape == (4, 2) and torch.allclose(ppd.probs.sum(-1), torch.ones(4))
    assert float(ppd.mutual_information().max()) > 0  # the LoRA draws do change predictions
