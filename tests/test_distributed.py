"""fit and train_pfn under torch.distributed: 2 CPU processes, gloo, torch.multiprocessing."""

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pyrobayes import Gaussian, fit, to_bayesian
from pyrobayes.distributed import GradSync, rank_seed
from pyrobayes.infer import load_fit_checkpoint
from pyrobayes.infer.steppers import FusedStepper
from pyrobayes.likelihoods import data_size
from pyrobayes.pfn import GPPrior, TrainConfig, train_pfn


def _store() -> str:
    """A fresh file rendezvous: unlike a TCP store hosted by rank 0, it does not vanish
    when rank 0 exits first (gloo then intermittently aborts the slower rank)."""
    return "file://" + os.path.join(tempfile.mkdtemp(prefix="pyrobayes-dist-"), "store")


def _worker(rank, world, store, fn, args):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world)
    fn(rank, *args)
    # tearing gloo down while the peer is still mid-collective aborts the process
    dist.barrier()
    dist.destroy_process_group()


def spawn(fn, *args, world=2):
    mp.spawn(_worker, args=(world, _store(), fn, args), nprocs=world, join=True)


# -- conjugate Bayesian linear regression ------------------------------------------

SIGMA, S_PRIOR, N = 0.3, 1.0, 60


def blr_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 2, generator=g, dtype=torch.float64)
    y = 0.8 * x[:, 0] - 0.4 * x[:, 1] + 0.3 + SIGMA * torch.randn(N, generator=g).double()
    return x, y


def blr_model(name="blr"):
    torch.manual_seed(0)
    return to_bayesian(
        nn.Linear(2, 1).double(),
        delta=0.1,
        prior="normal",
        prior_kwargs={"scale": S_PRIOR},
        likelihood=Gaussian(SIGMA),
        name=name,
    )


def guide_params(guide, name="blr"):
    loc_w, scale_w = guide.loc_and_scale(f"{name}.net.weight")
    loc_b, scale_b = guide.loc_and_scale(f"{name}.net.bias")
    return (
        torch.cat([loc_w.flatten(), loc_b]).detach(),
        torch.cat([scale_w.flatten(), scale_b]).detach(),
    )


def _one_step(rank, x, y, world, out):
    """One fused SGD(lr=1) step on this rank's half with fixed draws (the same on every
    rank) through the real stepper and its GradSync hook: the update is minus the
    averaged gradient, so it must equal the single-process update on the union batch."""
    model, guide = blr_model()
    stepper = FusedStepper(model, guide, lambda ps: torch.optim.SGD(ps, lr=1.0), {"beta": 1.0})
    if world > 1:
        stepper.sync = GradSync()
    half = len(x) // world
    xs, ys = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
    guide.setup(xs, y=ys)
    if rank > 0:  # a different init on rank 1: the broadcast from rank 0 must undo it
        with torch.no_grad():
            for p in guide.parameters():
                p.add_(0.5)
    eps = _eps_for(model, guide)
    loss = stepper.fused.loss
    stepper.fused.loss = lambda *a, **k: loss(*a, eps=eps, **k)
    with data_size(N):
        value = stepper.step(xs, y=ys)
    refused = ""
    if world > 1:  # Pyro's optimisers update inside SVI, out of reach of the all-reduce
        import pyro.optim

        try:
            fit(model, guide, (x, y), epochs=1, optim=pyro.optim.Adam({}), progress=False)
        except ValueError as exc:
            refused = str(exc)
    if rank == 0:
        state = {k: v.clone() for k, v in guide.state_dict().items()}
        torch.save({"loss": value, "state": state, "refused": refused}, out)


def _eps_for(model, guide):
    from pyrobayes.convert import bayesian_sites

    g = torch.Generator().manual_seed(7)
    eps = {}
    for site in sorted(bayesian_sites(model)):
        loc = guide.loc_and_scale(site)[0]
        eps[site] = torch.randn(loc.shape, generator=g, dtype=loc.dtype)
    return eps


def test_one_distributed_step_equals_the_union_batch_step(tmp_path):
    """Exact: with the same draws, the 2-rank step (each rank's ELBO scaled by the global
    N over its 10 points, prior once, gradients averaged) is the 1-process step on the 20
    points (scaled by N/20). float64, so agreement to 1e-10 is rounding only."""
    x, y = blr_data()
    x, y = x[:20], y[:20]
    spawn(_one_step, x, y, 2, tmp_path / "ddp.pt")
    _one_step(0, x, y, 1, tmp_path / "one.pt")
    ddp, one = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "one.pt")
    assert "Pyro optimiser" in ddp["refused"]
    assert math.isclose(ddp["loss"], one["loss"], rel_tol=1e-10)
    assert ddp["state"].keys() == one["state"].keys()
    for k in one["state"]:
        torch.testing.assert_close(ddp["state"][k], one["state"][k], rtol=1e-10, atol=1e-12)
    # the step moved the guide (a zero gradient would make the comparison vacuous)
    model, guide = blr_model()
    guide.setup(x[:10], y=y[:10])
    moved = [
        (one["state"][k] - v).abs().max()
        for k, v in guide.state_dict().items()
        if k in one["state"]
    ]
    assert max(moved) > 1e-3


def _fit_blr(rank, out, epochs, kwargs):
    x, y = blr_data()
    model, guide = blr_model()
    history = fit(model, guide, (x, y), epochs=epochs, progress=False, seed=0, **kwargs)
    if rank == 0:
        loc, scale = guide_params(guide)
        torch.save({"loc": loc, "scale": scale, "losses": history.losses}, out)


@pytest.mark.slow
def test_ddp_fit_recovers_the_exact_meanfield_optimum(tmp_path):
    """2 ranks x 10 points = global batch 20 of 60 (plate scaling N/b = 6 per rank), cosine
    schedule to 0. The mean-field optimum of the conjugate posterior N(mu, Lambda^-1) has
    means mu and variances 1/diag(Lambda). Same tolerance as the single-process test in
    test_fit.py (0.1 posterior std, 10%): a KL counted twice (per rank) would shrink the
    stds by sqrt(2) and a local N (30) by sqrt(2) too, both far outside 10%."""
    x, y = blr_data()
    phi = torch.cat([x, torch.ones(N, 1, dtype=x.dtype)], 1)
    lam = phi.T @ phi / SIGMA**2 + torch.eye(3, dtype=x.dtype) / S_PRIOR**2
    mu = torch.linalg.solve(lam, phi.T @ y / SIGMA**2)
    mf_std = lam.diagonal().rsqrt()
    kw = {"batch_size": 10, "lr": 0.03, "lr_schedule": "cosine"}
    spawn(_fit_blr, tmp_path / "ddp.pt", 1200, kw)
    res = torch.load(tmp_path / "ddp.pt")
    assert torch.allclose(res["loc"], mu, atol=0.1 * float(mf_std.min()))
    assert torch.allclose(res["scale"], mf_std, rtol=0.1)
    # the single-process run on the same global batch (20) ends at the same guide up to
    # the Monte-Carlo noise of the last annealed steps (different draws: rank-seeded), so
    # twice the tolerance of each against the optimum (measured: 0.05 std, 8.7%)
    kw["batch_size"] = 20
    _fit_blr(0, tmp_path / "one.pt", 1200, kw)
    one = torch.load(tmp_path / "one.pt")
    assert torch.allclose(res["loc"], one["loc"], atol=0.2 * float(mf_std.min()))
    assert torch.allclose(res["scale"], one["scale"], rtol=0.2)


def _fit_ckpt(rank, ckpt, out, epochs, die_at):
    x, y = blr_data()
    model, guide = blr_model()

    def die(record):
        if rank == 1 and record["epoch"] == die_at:
            os._exit(3)  # a crashed rank: no cleanup, no exception

    h = fit(model, guide, (x, y), epochs=epochs, batch_size=10, lr=0.03, progress=False,
            checkpoint=ckpt, resume=True, callbacks=[die])  # fmt: skip
    if rank == 0:
        loc, scale = guide_params(guide)
        torch.save({"loc": loc, "scale": scale, "losses": h.losses}, out)


@pytest.mark.slow
def test_dead_rank_leaves_the_checkpoint_and_the_run_resumes(tmp_path):
    """Rank 1 dies after epoch 3's steps; rank 0 has written epoch 2's checkpoint (it
    cannot pass epoch 3's stop all-reduce without rank 1). Resuming with 2 ranks gives
    exactly the uninterrupted 2-rank run (draws seeded by (seed, rank, epoch), shards by
    (seed, epoch)); resuming with 1 process also finishes from the same checkpoint."""
    ckpt = tmp_path / "fit.json"
    with pytest.raises(Exception, match="exit"):
        spawn(_fit_ckpt, ckpt, tmp_path / "dead.pt", 6, 3)
    state = load_fit_checkpoint(ckpt)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert not (tmp_path / "dead.pt").exists()

    spawn(_fit_ckpt, ckpt, tmp_path / "resumed.pt", 6, -1)
    spawn(_fit_ckpt, tmp_path / "fresh.json", tmp_path / "fresh.pt", 6, -1)
    resumed, fresh = torch.load(tmp_path / "resumed.pt"), torch.load(tmp_path / "fresh.pt")
    assert resumed["losses"] == fresh["losses"] and len(fresh["losses"]) == 6
    torch.testing.assert_close(resumed["loc"], fresh["loc"], rtol=0, atol=0)
    torch.testing.assert_close(resumed["scale"], fresh["scale"], rtol=0, atol=0)

    # another world size: one process continues from the same epoch-2 checkpoint
    state = load_fit_checkpoint(ckpt)
    ckpt2 = tmp_path / "one.json"
    import shutil

    shutil.copy(ckpt, ckpt2)
    shutil.copy(str(ckpt) + ".safetensors", str(ckpt2) + ".safetensors")
    x, y = blr_data()
    model, guide = blr_model()
    h = fit(model, guide, (x, y), epochs=6, batch_size=20, lr=0.03, progress=False,
            checkpoint=ckpt2, resume=True)  # fmt: skip
    assert len(h) == 6 and h.losses[:2] == fresh["losses"][:2]


def test_rank_seeds_differ_by_every_key():
    seeds = {rank_seed(0, r, e) for r in range(4) for e in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**32 for s in seeds)
    assert rank_seed(0, 1) != rank_seed(1, 0)


# -- PFN -------------------------------------------------------------------------


class HalvesPrior:
    """A GP prior whose step-t batch of 2b datasets is fixed in advance: one process
    gets all of it, rank r of two gets the r-th half, so both runs see the same global
    batch."""

    task = "regression"

    def __init__(self, steps, b, seq_len):
        self.gp = GPPrior()
        self.num_features, self.x_low, self.x_high = 1, self.gp.x_low, self.gp.x_high
        torch.manual_seed(11)
        self.pool = [self.gp.sample(2 * b, seq_len) for _ in range(steps)]
        self.calls = 0

    def describe(self):
        return self.gp.describe()

    def sample(self, batch_size, seq_len):
        x, y = self.pool[self.calls]
        self.calls += 1
        if dist.is_initialized() and dist.get_world_size() == 2:
            r = dist.get_rank()
            return x[r * batch_size : (r + 1) * batch_size], y[
                r * batch_size : (r + 1) * batch_size
            ]
        return x, y


PFN_CFG = dict(seq_len=16, min_train=8, max_train=8, d_model=16, n_layers=1, n_heads=2,
               d_ff=32, num_bars=20, progress=False, log_every=1, lr=3e-3, warmup_steps=1)  # fmt: skip


def _pfn_model():
    from pyrobayes.pfn.model import PFN
    from pyrobayes.pfn.train import make_config

    torch.manual_seed(0)
    cfg = TrainConfig(steps=5, batch_size=4, border_samples=400, **PFN_CFG)
    return PFN(make_config(GPPrior(), cfg))


def _train(rank, steps, batch, out):
    prior = HalvesPrior(steps, 4, 16)
    result = train_pfn(
        prior, TrainConfig(steps=steps, batch_size=batch, **PFN_CFG), model=_pfn_model()
    )
    if rank == 0:
        torch.save([h["loss"] for h in result.history], out)


def test_ddp_train_pfn_matches_the_single_process_trajectory(tmp_path):
    """2 ranks x 4 datasets vs 1 process x the same 8 (fixed split n=8): DDP averages the
    gradients of the two half-batch means, which is the gradient of the 8-dataset mean,
    and the logged loss is the mean over ranks. float32 rounding only: 1e-5."""
    spawn(_train, 5, 4, tmp_path / "ddp.pt")
    _train(0, 5, 8, tmp_path / "one.pt")
    ddp, one = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "one.pt")
    assert len(one) == 5 and one[0] != one[-1]
    assert ddp == pytest.approx(one, rel=1e-5)


def test_bf16_on_cpu_warns_and_runs_fp32():
    cfg = TrainConfig(steps=1, batch_size=2, precision="bf16", **PFN_CFG)
    with pytest.warns(UserWarning, match="CUDA only"):
        train_pfn(HalvesPrior(1, 2, 16), cfg, model=_pfn_model())
    with pytest.raises(ValueError, match="unknown precision"):
        TrainConfig(precision="fp8")


def test_shard_loader_keeps_the_users_loader_and_refuses_streams():
    from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, TensorDataset

    from pyrobayes.distributed import shard_loader

    ds = TensorDataset(torch.arange(10.0), torch.arange(10.0))

    def collate(batch):
        return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])

    user = DataLoader(ds, batch_size=3, shuffle=True, collate_fn=collate, drop_last=True)
    loader = shard_loader(user, 64, False, 0, None)
    assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.shuffle
    assert loader.batch_size == 3 and loader.collate_fn is collate and loader.drop_last
    seen = torch.cat([b[0] for b in loader]).tolist()  # one rank: all of it, 3 full batches
    assert len(seen) == 9 and len(set(seen)) == 9

    class Stream(IterableDataset):
        def __iter__(self):
            yield from zip(torch.arange(3.0), torch.arange(3.0))

    with pytest.raises(ValueError, match="IterableDataset"):
        shard_loader(DataLoader(Stream(), batch_size=2), 64, False, 0, None)


def _train_resumable(rank, out, steps, time_limit, result):
    cfg = TrainConfig(steps=steps, batch_size=2, out=str(out), resume=True, checkpoint_every=0,
                      time_limit=time_limit, **PFN_CFG)  # fmt: skip
    res = train_pfn(
        GPPrior(), cfg, model=None if (out.with_suffix(".json")).exists() else _pfn_model()
    )
    if rank == 0:
        torch.save({"history": res.history, "state": res.model.state_dict()}, result)


@pytest.mark.slow
def test_ddp_train_pfn_resumes_exactly(tmp_path):
    """Stop a 2-rank run after its first step (time_limit=0), resume it to 4 steps: the
    weights equal those of an uninterrupted 2-rank run (datasets seeded by step and rank,
    AdamW state restored from rank 0's checkpoint)."""
    spawn(_train_resumable, tmp_path / "a", 4, 0.0, tmp_path / "first.pt")
    assert torch.load(tmp_path / "first.pt")["history"][-1]["step"] == 1
    spawn(_train_resumable, tmp_path / "a", 4, None, tmp_path / "resumed.pt")
    spawn(_train_resumable, tmp_path / "b", 4, None, tmp_path / "fresh.pt")
    resumed, fresh = torch.load(tmp_path / "resumed.pt"), torch.load(tmp_path / "fresh.pt")
    for k, v in fresh["state"].items():
        torch.testing.assert_close(resumed["state"][k], v, rtol=0, atol=0)
