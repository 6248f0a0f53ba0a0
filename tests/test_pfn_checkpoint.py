"""Checkpoints: round trip, validation of foreign/corrupted files, the shipped weights."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pyrobayes.pfn import (
    PFN,
    BarDistribution,
    GPPrior,
    PFNConfig,
    load_checkpoint,
    pretrained,
    save_checkpoint,
)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    cfg = PFNConfig(
        d_model=16,
        n_layers=1,
        n_heads=2,
        d_ff=32,
        borders=tuple(torch.linspace(-3, 3, 21).tolist()),
    )
    pfn = PFN(cfg).eval()
    path = save_checkpoint(pfn, tmp_path / "tiny", training={"steps": 0})
    return pfn, path


def test_round_trip_gives_identical_predictions(saved):
    pfn, path = saved
    assert path.suffix == ".safetensors" and path.with_suffix(".json").exists()
    loaded = load_checkpoint(path)
    assert loaded.config == pfn.config
    assert loaded.checkpoint_info["training"] == {"steps": 0}
    a = pfn.predict([0.0, 1.0], [0.2, -0.1], [0.5, -0.5])
    b = loaded.predict([0.0, 1.0], [0.2, -0.1], [0.5, -0.5])
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    torch.testing.assert_close(loaded.criterion.borders, torch.tensor(pfn.config.borders))


def test_corrupted_weights_are_detected(saved):
    _, path = saved
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        load_checkpoint(path)


def test_truncated_file_without_checksum_is_a_clear_error(saved):
    _, path = saved
    meta = path.with_suffix(".json")
    info = json.loads(meta.read_text())
    del info["sha256"]
    meta.write_text(json.dumps(info))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_checkpoint(path)


def test_foreign_json_is_rejected(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"model_type": "bert"}))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a pyrobayes PFN checkpoint"):
        load_checkpoint(tmp_path / "x")
    (tmp_path / "y.json").write_text("\x00garbage")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(tmp_path / "y.safetensors")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing")


def test_weights_that_do_not_match_the_config_are_rejected(saved):
    _, path = saved
    meta = path.with_suffix(".json")
    info = json.loads(meta.read_text())
    info["config"]["d_model"] = 32  # tensors are 16-wide
    meta.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(path)
    info["config"]["d_model"] = 16
    info["config"]["n_layers"] = 2
    meta.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(path)
    info["config"]["n_layers"] = "lots"
    meta.write_text(json.dumps(info))
    with pytest.raises((ValueError, TypeError)):
        load_checkpoint(path)


@pytest.mark.parametrize("name", ["gp-1d", "bnn-1d"])
def test_shipped_checkpoints_load_and_predict(name):
    pfn = pretrained(name)
    c = pfn.config
    assert c.max_train == 50 and c.x_low == (-2.0,) and c.x_high == (2.0,) and c.num_features == 1
    assert c.prior["noise_std"] == pytest.approx(0.1)
    ppd = pfn.predict(np.linspace(-1.5, 1.5, 10), np.zeros(10), np.linspace(-2, 2, 7))
    assert isinstance(ppd, BarDistribution) and ppd.batch_shape == torch.Size([7])
    assert torch.isfinite(ppd.mean).all() and (ppd.variance > 0).all()
    lo, hi = ppd.interval(0.9)
    assert (lo < hi).all()


def test_unknown_pretrained_name():
    with pytest.raises(ValueError, match="gp-1d"):
        pretrained("gp-2d")


def test_shipped_gp_pfn_is_close_to_the_exact_gp():
    # 30 datasets from the shipped prior with 20 training points each. The gap's
    # standard error over 30 sets is ~0.02 nats, the shipped PFN sits at ~0.03, and a
    # PFN that ignored the data would be ~1 nat/point worse than the GP at n = 20;
    # benchmarks/bench_pfn.py measures the gap precisely on 500 sets.
    pfn = pretrained("gp-1d")
    prior = GPPrior(lengthscale=0.5, outputscale=1.0, noise_std=0.1)
    torch.manual_seed(0)
    x, y = prior.sample(30, 40)
    gap = []
    for i in range(30):
        pfn_nll = -pfn.predict(x[i, :20], y[i, :20], x[i, 20:]).log_prob(y[i, 20:]).mean()
        gp_nll = -prior.ppd(x[i, :20], y[i, :20], x[i, 20:]).log_prob(y[i, 20:]).mean()
        gap.append(float(pfn_nll - gp_nll))
    assert np.mean(gap) < 0.15
