"""Plots render headless to non-empty PNGs and draw what they claim."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from pyrobayes.compare import compare_ppds  # noqa: E402
from pyrobayes.gp import exact_gp_ppd  # noqa: E402
from pyrobayes.metrics import expected_calibration_error  # noqa: E402
from pyrobayes.plotting import (  # noqa: E402
    plot_nll_vs_time,
    plot_ppd,
    plot_ppd_comparison,
    plot_reliability,
)
from pyrobayes.ppd import CategoricalPPD, NormalMixturePPD, normal_ppd  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _save(fig, path):
    fig.savefig(path, dpi=60)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000
    return data


def _problem():
    g = torch.Generator().manual_seed(0)
    x_tr = torch.rand(10, generator=g) * 4 - 2
    y_tr = torch.sin(2 * x_tr) + 0.1 * torch.randn(10, generator=g)
    xq = torch.linspace(-3, 3, 60)
    return x_tr, y_tr, xq


def test_plot_ppd_draws_bands_mean_truth_and_data(tmp_path):
    x_tr, y_tr, xq = _problem()
    ppd = exact_gp_ppd(x_tr, y_tr, xq)
    fig, ax = plot_ppd(
        xq[:, None], ppd, train=(x_tr, y_tr.numpy()), truth=lambda x: torch.sin(2 * x), label="GP"
    )
    _save(fig, tmp_path / "ppd.png")
    assert len(ax.collections) == 3  # two interval bands + the training scatter
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"GP", "truth"}
    assert np.allclose(lines["GP"].get_ydata(), ppd.mean.numpy(), atol=1e-6)
    # the 90% band is wider than the 50% band everywhere
    (wide, narrow) = (ax.collections[0].get_paths()[0], ax.collections[1].get_paths()[0])
    assert np.ptp(wide.vertices[:, 1]) > np.ptp(narrow.vertices[:, 1])


def test_plot_ppd_sorts_inputs_and_draws_on_given_axes(tmp_path):
    from matplotlib.figure import Figure

    x_tr, y_tr, xq = _problem()
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(1))
    ppd = NormalMixturePPD(torch.stack([xq[perm], xq[perm] + 0.5]), 0.2)
    fig = Figure()
    ax = fig.add_subplot()
    fig2, ax2 = plot_ppd(xq[perm], ppd, ax=ax, levels=(0.9,), truth=(xq, xq + 0.25))
    assert fig2 is fig and ax2 is ax
    mean_line = ax.get_lines()[0]
    assert np.all(np.diff(mean_line.get_xdata()) > 0)
    assert np.allclose(mean_line.get_ydata(), np.sort(xq.numpy()) + 0.25, atol=1e-6)
    _save(fig, tmp_path / "sorted.png")


def test_plot_ppd_comparison_shares_limits(tmp_path):
    x_tr, y_tr, xq = _problem()
    ppds = {
        "exact GP": exact_gp_ppd(x_tr, y_tr, xq),
        "wide": normal_ppd(torch.zeros(60), 3.0),
        "narrow": normal_ppd(torch.sin(2 * xq), 0.05),
        "mixture": NormalMixturePPD(torch.stack([torch.sin(2 * xq), torch.cos(2 * xq)]), 0.1),
    }
    fig, axes = plot_ppd_comparison(xq, ppds, train=(x_tr, y_tr), truth=lambda x: torch.sin(2 * x))
    _save(fig, tmp_path / "comparison.png")
    assert len(axes) == 4 and [a.get_title() for a in axes] == list(ppds)
    assert len({a.get_ylim() for a in axes}) == 1 and len({a.get_xlim() for a in axes}) == 1
    lo, hi = axes[0].get_ylim()
    assert lo < -3 * 1.64 and hi > 3 * 1.64  # the widest 90% band fits in every panel
    assert sum(a.get_visible() for a in fig.axes) == 4  # the spare 6th panel is hidden


def test_plot_reliability(tmp_path):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(300, 4, generator=g), -1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(-1)
    ppd = CategoricalPPD(probs[None])
    fig, ax = plot_reliability(ppd, labels.numpy(), n_bins=10)
    _save(fig, tmp_path / "reliability.png")
    ece = expected_calibration_error(ppd, labels, n_bins=10)
    assert f"ECE = {ece:.4f}" in ax.get_title()
    assert 0 < len(ax.patches) <= 10  # one bar per non-empty bin
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        plot_reliability(ppd, labels + 1)


def test_plot_nll_vs_time(tmp_path):
    results = {
        "PFN": (0.02, 0.31),
        "SVI": ([1.0, 10.0, 60.0], [0.9, 0.5, 0.4]),
        "NUTS": (np.array([30.0, 300.0]), torch.tensor([0.45, 0.3])),
    }
    fig, ax = plot_nll_vs_time(results, reference_nll=0.28, reference_label="exact GP")
    _save(fig, tmp_path / "nll_time.png")
    assert ax.get_xscale() == "log"
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["PFN", "SVI", "NUTS", "exact GP"]
    assert list(ax.get_lines()[1].get_xdata()) == [1.0, 10.0, 60.0]
    with pytest.raises(ValueError, match="positive seconds"):
        plot_nll_vs_time({"bad": (0.0, 1.0)})
    with pytest.raises(ValueError, match="2 times but 3 NLL"):
        plot_nll_vs_time({"bad": ([1.0, 2.0], [1.0, 2.0, 3.0])})


def test_plot_nll_vs_time_from_comparison_table(tmp_path):
    y = torch.randn(30, generator=torch.Generator().manual_seed(0))
    table = compare_ppds(
        {
            "a": normal_ppd(torch.zeros(30), 1.0),
            "b": normal_ppd(torch.zeros(30), 2.0),
            "c": normal_ppd(torch.zeros(30), 0.5),
        },
        y,
        times={"a": 0.1, "b": 5.0},
    )
    fig, ax = plot_nll_vs_time(table)
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]  # "c" has no time
    assert ax.get_lines()[0].get_ydata()[0] == pytest.approx(table.row("a")["nll"])
    _save(fig, tmp_path / "table.png")


def test_plotting_rejects_mismatched_inputs():
    x_tr, y_tr, xq = _problem()
    ppd = exact_gp_ppd(x_tr, y_tr, xq)
    with pytest.raises(ValueError, match="x has 59 points but the PPD's batch shape is \\(60,\\)"):
        plot_ppd(xq[:59], ppd)
    with pytest.raises(ValueError, match="shape \\[n\\] or \\[n, 1\\]"):
        plot_ppd(torch.zeros(60, 2), ppd)
    with pytest.raises(ValueError, match="x_train has 10 points but y_train has 9"):
        plot_ppd(xq, ppd, train=(x_tr, y_tr[:9]))
    with pytest.raises(ValueError, match="truth has 5 values"):
        plot_ppd(xq, ppd, truth=np.zeros(5))
    with pytest.raises(ValueError, match="levels"):
        plot_ppd(xq, ppd, levels=(0.5, 1.0))
    with pytest.raises(ValueError, match="classification PPD"):
        plot_ppd(xq, CategoricalPPD(torch.full((1, 60, 2), 0.5)))
    with pytest.raises(ValueError, match="non-empty"):
        plot_ppd_comparison(xq, {})


def _tiny_pfn():
    from pyrobayes.pfn import PFN, PFNConfig

    borders = tuple(float(b) for b in range(11))
    return PFN(PFNConfig(d_model=16, n_layers=1, n_heads=2, d_ff=16, borders=borders))


def test_training_curve_reads_a_checkpoint_and_checks_its_input(tmp_path):
    from pyrobayes.pfn.checkpoint import save_checkpoint
    from pyrobayes.plotting import plot_training_curve

    hist = [{"step": 10 * (i + 1), "loss": 3.0 - 0.1 * i, "lr": 1e-3} for i in range(12)]
    path = tmp_path / "tiny"
    save_checkpoint(_tiny_pfn(), path, training={"history": hist})
    fig, ax = plot_training_curve(str(path), window=3)
    raw, smooth = ax.lines[0], ax.lines[1]
    assert list(raw.get_ydata()) == [h["loss"] for h in hist]
    # running median of 3 consecutive entries, placed at the middle step
    assert smooth.get_xdata()[0] == 20 and np.isclose(smooth.get_ydata()[0], 2.9)
    _save(fig, tmp_path / "curve.png")
    with pytest.raises(ValueError, match="'step' and 'loss'"):
        plot_training_curve([{"loss": 1.0}])
    save_checkpoint(_tiny_pfn(), tmp_path / "bare")
    with pytest.raises(ValueError, match="no training history"):
        plot_training_curve(str(tmp_path / "bare"))
