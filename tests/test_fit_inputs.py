"""What ``fit`` makes of its inputs: the data size N of an epoch, the data a checkpoint was
written for, batches that are not all tensors, a wrong feature count, the net's mode."""

import pyro
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, SubsetRandomSampler, TensorDataset

from pyrobayes import Gaussian, fit, to_bayesian
from pyrobayes.infer import load_fit_checkpoint
from pyrobayes.infer.fit_checkpoint import save_fit_checkpoint


def regression(n=40, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x[:, 0] + 0.1 * torch.randn(n, generator=g)
    return x, y


def new_model(net=None, name=None):
    torch.manual_seed(0)
    net = net or nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    return to_bayesian(net, delta=0.1, likelihood=Gaussian(0.1), prior="normal", name=name)


def plate_sizes(model):
    """A callback noting the N the likelihood plate takes for a batch of 10 points."""
    seen = []

    def note(record):
        seen.append(model.likelihood.plate_size(10))

    return seen, note


# --- 1. N is what one epoch visits ------------------------------------------------------


@pytest.mark.parametrize(
    "order, drop_last, n",
    [("subset", False, 100), ("subset", True, 100), ("sequential", True, 90)],
)
def test_sampler_sets_n_to_the_points_an_epoch_visits(order, drop_last, n):
    """A random order draws every batch from all the sampler's points (N = 100 also with
    drop_last); a fixed order never visits the dropped tail (N = 90)."""
    x, y = regression(1000)
    if order == "subset":
        sampler = SubsetRandomSampler(range(100), generator=torch.Generator().manual_seed(0))
        ds = TensorDataset(x, y)
    else:
        sampler, ds = None, TensorDataset(x[:100], y[:100])
    loader = DataLoader(ds, batch_size=30, sampler=sampler, drop_last=drop_last)
    model, guide = new_model()
    seen, note = plate_sizes(model)
    fit(model, guide, loader, epochs=1, callbacks=[note], progress=False)
    assert seen == [n]  # not len(dataset) = 1000


class Stream(IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        yield from zip(self.x, self.y)


def test_iterable_dataset_needs_data_size():
    x, y = regression(60)
    model, guide = new_model()
    loader = DataLoader(Stream(x, y), batch_size=20)
    with pytest.raises(ValueError, match="cannot know how many points.*data_size="):
        fit(model, guide, loader, epochs=1, progress=False)
    seen, note = plate_sizes(model)
    fit(model, guide, loader, epochs=1, data_size=60, callbacks=[note], progress=False)
    assert seen == [60]  # not the batch size (20)


def test_data_size_is_the_users_and_validated():
    x, y = regression(40)
    model, guide = new_model()
    seen, note = plate_sizes(model)
    fit(model, guide, (x, y), epochs=1, batch_size=10, data_size=400, callbacks=[note],
        progress=False)  # fmt: skip
    assert seen == [400]
    for bad in (0, -3, 2.5, True, "40"):
        with pytest.raises(ValueError, match="data_size must be a positive integer"):
            fit(model, guide, (x, y), epochs=1, data_size=bad, progress=False)


def test_distributed_fit_refuses_a_sampler_it_would_drop(monkeypatch):
    from pyrobayes import distributed as dist_
    from pyrobayes.infer.fit import FitConfig
    from pyrobayes.infer.fit_data import shard as _shard

    x, y = regression(100)
    loader = DataLoader(TensorDataset(x, y), batch_size=10, sampler=SubsetRandomSampler(range(50)))
    monkeypatch.setattr(dist_, "is_distributed", lambda: True)
    with pytest.raises(ValueError, match="SubsetRandomSampler.*Subset"):
        _shard(loader, loader, FitConfig())


# --- 2. resume checks the data ----------------------------------------------------------


def _fit_ckpt(data, ckpt, epochs, **kw):
    pyro.clear_param_store()
    model, guide = new_model(name="ck")
    return fit(model, guide, data, epochs=epochs, batch_size=16, progress=False, seed=1,
               checkpoint=ckpt, resume=True, **kw)  # fmt: skip


def test_resume_with_different_data_is_refused(tmp_path):
    x, y = regression(40)
    ckpt = tmp_path / "fit.json"
    _fit_ckpt((x, y), ckpt, 1)
    x2 = x.clone()
    x2[17, 1] += 1e-3  # one value in one row
    with pytest.raises(ValueError, match=r"different data(.|\n)*input 0: content differs"):
        _fit_ckpt((x2, y), ckpt, 2)
    with pytest.raises(
        ValueError,
        match=r"different data(.|\n)*N: checkpoint 40, now 39(.|\n)*input 0: shape checkpoint \(40, 2\), now \(39, 2\)",
    ):
        _fit_ckpt((x[:39], y[:39]), ckpt, 2)
    with pytest.raises(ValueError, match=r"targets: dtype checkpoint float32, now float64"):
        _fit_ckpt((x, y.double()), ckpt, 2)
    assert len(_fit_ckpt((x, y), ckpt, 2)) == 2  # the same data resumes


class Rows(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_resume_with_a_different_loader_is_refused(tmp_path):
    x, y = regression(40)
    ckpt = tmp_path / "fit.json"
    _fit_ckpt(DataLoader(Rows(x, y), batch_size=8), ckpt, 1)
    with pytest.raises(ValueError, match=r"dataset length: checkpoint 40, now 32"):
        _fit_ckpt(DataLoader(Rows(x[:32], y[:32]), batch_size=8), ckpt, 2)
    x3 = torch.randn(40, 3)
    with pytest.raises(ValueError, match=r"input 0: shape per point checkpoint \(2,\), now \(3,\)"):
        _fit_ckpt(DataLoader(Rows(x3, y), batch_size=8), ckpt, 2)
    assert len(_fit_ckpt(DataLoader(Rows(x, y), batch_size=8), ckpt, 2)) == 2


def test_checkpoint_without_fingerprint_still_resumes_with_a_warning(tmp_path):
    x, y = regression(40)
    ckpt = tmp_path / "fit.json"
    _fit_ckpt((x, y), ckpt, 1)
    state = load_fit_checkpoint(ckpt)
    del state["data"]  # as written by an older pyrobayes
    save_fit_checkpoint(ckpt, state)
    with pytest.warns(UserWarning, match="no data fingerprint"):
        assert len(_fit_ckpt((x, y), ckpt, 2)) == 2


# --- 3. non-tensor fields in a batch ----------------------------------------------------


def test_dict_batch_with_a_string_field_names_the_field():
    x, y = regression(16)

    class Tokenised(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return {"input": x[i], "text": f"sentence {i}", "labels": y[i]}

    model, guide = new_model()
    loader = DataLoader(Tokenised(), batch_size=8)
    with pytest.raises(TypeError, match=r"field 'text' .*list.*not a tensor.*remove"):
        fit(model, guide, loader, epochs=1, progress=False)


# --- 4. a wrong feature count -----------------------------------------------------------


@pytest.mark.parametrize("fused", [None, False])
def test_wrong_feature_count_names_both_shapes(fused):
    x, y = regression(20, d=3)
    model, guide = new_model()
    with pytest.raises(ValueError, match=r"expects 2 features, got x of shape \(10, 3\)"):
        fit(model, guide, (x, y), epochs=1, batch_size=10, fused=fused, progress=False)


# --- 5. the net's train/eval mode -------------------------------------------------------


def bn_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 1))
    net.eval()
    return new_model(net)


@pytest.mark.parametrize("fused", [None, False])
def test_train_mode_false_keeps_batchnorm_frozen_and_eval_mode_stays(fused):
    x, y = regression(40)
    x = 3 + 2 * x  # far from the running stats (0, 1): a train-mode step would move them
    model, guide = bn_model()
    bn = model.net[1]
    before = {k: v.clone() for k, v in bn.named_buffers()}
    fit(model, guide, (x, y), epochs=2, batch_size=10, train_mode=False, fused=fused,
        progress=False)  # fmt: skip
    assert all(torch.equal(v, before[k]) for k, v in bn.named_buffers())
    assert not any(m.training for m in model.net.modules())


@pytest.mark.parametrize("fused", [None, False])
def test_default_trains_in_train_mode_and_restores_the_users_mode(fused):
    x, y = regression(40)
    x = 3 + 2 * x
    model, guide = bn_model()
    model.train()
    model.net[2].eval()  # a per-module choice of the user's is restored as well
    modes = [m.training for m in model.modules()]
    bn = model.net[1]
    before = bn.running_mean.clone()
    fit(model, guide, (x, y), epochs=1, batch_size=10, fused=fused, progress=False)
    assert not torch.equal(bn.running_mean, before)  # train mode: the statistics move
    assert [m.training for m in model.modules()] == modes
    model.eval()
    fit(model, guide, (x, y), epochs=1, batch_size=10, fused=fused, progress=False)
    assert not any(m.training for m in model.modules())
