"""SVI speed, predictive speed and memory, and the quality of the Bayesian digits MLP.

Measured in one run, as ratios against a baseline on the same machine:

* one SVI epoch (MOPED guide, fused Trace_ELBO step) versus one deterministic epoch of the
  same MLP 64-256-256-10 at the same batch size (:class:`DeterministicEpoch`, run right
  after each SVI epoch); Pyro's plain path (``SVI`` with ``pyro.optim.Adam``, traced model
  and guide) is shown for context;
* the vectorised ``PosteriorPredictive`` versus ``pyro.infer.Predictive`` (sequential) at
  32 and 100 draws, each with its peak extra resident memory;
* accuracy, NLL and ECE of the Bayesian MLP against the deterministic one (digits test split);
* MiniLM: peak memory of a 32-draw predictive over 256 sentences, chunked and unchunked.

Reproduce::

    python benchmarks/bench_svi.py            # full run, writes its section of RESULTS.md
    python benchmarks/bench_svi.py --quick    # fewer repeats, no MiniLM, prints only
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import markdown_table, peak_extra_memory_mb, write_section  # noqa: E402

SECTION = "## bench_svi.py"
BATCH = 64


def digits():
    from pyrobayes.data import load_digits, to_tensors

    d = load_digits()
    return (*to_tensors(d["train"]), *to_tensors(d["test"]))


def train_mlp(x, y, epochs=30, seed=0):
    """The deterministic baseline: the library's trainer, per-epoch wall times."""
    from pyrobayes.models.mlp import MLP
    from pyrobayes.models.train import train_network

    torch.manual_seed(seed)
    net = MLP(64, (256, 256), 10, activation="relu")
    history = train_network(net, x, y, epochs=epochs, batch_size=BATCH, seed=seed, progress=False)
    return net, history.epoch_seconds


def build(net, name="digits"):
    from pyrobayes import Categorical, to_bayesian

    return to_bayesian(
        net,
        delta=0.05,
        prior="pretrained",
        prior_kwargs={"scale": 0.1},
        likelihood=Categorical(),
        name=name,
    )


class DeterministicEpoch:
    """The baseline: one epoch of ordinary PyTorch training of a copy of the MLP, the loop
    of ``pyrobayes.models.train.train_network``: a ``randperm`` of the in-memory tensors
    per epoch, for each batch of ``BATCH`` rows ``x[idx]``, forward, mean cross-entropy,
    ``zero_grad``, ``backward``, ``torch.optim.Adam(lr=1e-3)`` (torch defaults) step, the
    loss summed on the tensor and read once per epoch. ``loader=True``: the same loop over
    ``DataLoader(TensorDataset(x, y), BATCH, shuffle=True)`` instead of the indexing."""

    def __init__(self, net, x, y, loader=False, seed=0):
        import copy

        from torch.utils.data import DataLoader, TensorDataset

        self.net = copy.deepcopy(net).train()
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.x, self.y = x, y
        self.gen = torch.Generator().manual_seed(seed)
        self.loader = (
            DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=self.gen)
            if loader
            else None
        )

    def _batches(self):
        if self.loader is not None:
            yield from self.loader
            return
        for idx in torch.randperm(len(self.x), generator=self.gen).split(BATCH):
            yield self.x[idx], self.y[idx]

    def __call__(self) -> float:
        t0 = time.perf_counter()
        total = torch.zeros(())
        for xb, yb in self._batches():
            loss = torch.nn.functional.cross_entropy(self.net(xb), yb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.detach() * len(yb)
        float(total)
        return time.perf_counter() - t0


def svi_epoch_times(net, x, y, epochs, pyro_path=False):
    """Seconds of each SVI epoch after the first (``fit``'s own per-epoch timing), and,
    measured right after each of them (``fit``'s epoch callback), one epoch of each
    deterministic baseline: ``{"svi": [...], "det": [...], "det_loader": [...]}``.
    Interleaving keeps the ratios honest on a machine whose load drifts."""
    import pyro

    from pyrobayes import fit

    pyro.clear_param_store()
    model, guide = build(net)
    kw = (
        {"fused": False, "optim": pyro.optim.Adam({"lr": 1e-3}), "validate": True}
        if pyro_path
        else {}
    )
    baselines = {
        "det": DeterministicEpoch(net, x, y),
        "det_loader": DeterministicEpoch(net, x, y, True),
    }
    times = {"det": [], "det_loader": []}

    def interleave(record):
        if record["epoch"] > 1:  # the first SVI epoch builds the guide and optimiser
            for name, run in baselines.items():
                times[name].append(run())

    h = fit(
        model, guide, (x, y), epochs=epochs, batch_size=BATCH, lr=1e-3, progress=False,
        callbacks=[interleave], **kw,
    )  # fmt: skip
    times["svi"] = [r["seconds"] for r in h.records[1:]]
    return times, model, guide


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-epoch ratios of two interleaved series."""
    return statistics.median(a / b for a, b in zip(num, den))


def evaluate(ppd, labels):
    from pyrobayes.metrics import classification_metrics

    m = classification_metrics(ppd, labels)
    return {k: float(m[k]) for k in ("accuracy", "nll", "ece", "brier")}


def predictive_seconds(model, guide, x, draws, vectorised, repeats):
    import pyro

    from pyrobayes import PosteriorPredictive

    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if vectorised:
            PosteriorPredictive(model, guide, num_samples=draws, chunk_size=None).outputs(x)
        else:
            model.eval()
            pyro.infer.Predictive(
                model, guide=guide, num_samples=draws, parallel=False, return_sites=["_RETURN"]
            )(x)
        ts.append(time.perf_counter() - t0)
    return min(ts)


def breakdown_seconds(model, guide, net, x, draws, rounds):
    """Best-of-``rounds`` seconds, the parts measured in turn within each round: the
    standard normals that ``draws`` weight sets need, drawn as the predictive draws them
    (``torch.randn`` block by block into one reused buffer, blocks of ``fast_block_size``
    draws), drawing the weight sets in one go (``sample_posterior``), evaluating the network
    under them (``forward_draws``), the whole vectorised predictive
    (``PosteriorPredictive.outputs``, which draws and evaluates block by block) and the
    deterministic floor."""
    from pyrobayes import PosteriorPredictive
    from pyrobayes.infer.predictive import sample_posterior
    from pyrobayes.infer.twin import fast_block_size, forward_draws

    model.eval()
    d = sample_posterior(guide, draws, x)
    n_weights = sum(v[0].numel() for v in d.values())
    block = min(draws, fast_block_size(model, x) or draws)
    buf = torch.empty(block * n_weights)

    def normals():
        for start in range(0, draws, block):
            n = min(block, draws - start) * n_weights
            torch.randn(n, out=buf[:n])

    parts = {
        "randn": normals,
        "sample": lambda: sample_posterior(guide, draws, x),
        "forward": lambda: forward_draws(model, d, x),
        "outputs": lambda: PosteriorPredictive(
            model, guide, num_samples=draws, chunk_size=None
        ).outputs(x),
        "floor": lambda: deterministic_floor_seconds(net, x, draws, 1),
    }
    best = dict.fromkeys(parts, math.inf)
    for _ in range(rounds):
        for name, run in parts.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, n_weights, block


def interleaved_seconds(runs: dict, rounds: int) -> dict:
    """Best-of-``rounds`` seconds of each callable, run in turn within each round (so a
    drifting machine load hits all of them alike)."""
    best = dict.fromkeys(runs, math.inf)
    for _ in range(rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def deterministic_floor_seconds(net, x, draws, repeats):
    """``draws`` plain forward passes of the deterministic net: the compute floor that any
    ``draws``-draw predictive must pay (same matrix products, no sampling)."""
    ts = []
    net.eval()
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(draws):
                net(x)
            ts.append(time.perf_counter() - t0)
    return min(ts)


def minilm_memory(chunk: int | None, draws: int = 32, n: int = 256) -> float:
    """Peak extra memory of a ``draws``-draw predictive over ``n`` sentences, all of
    MiniLM's weights Bayesian (eager attention: SDPA has no vmap batching rule)."""
    from pyrobayes import Categorical, PosteriorPredictive, to_bayesian
    from pyrobayes.data import load_sentiment
    from pyrobayes.models.hf import bayesian_include, load_sequence_classifier

    bert, tok = load_sequence_classifier(attn_implementation="eager")
    model, guide = to_bayesian(
        bert,
        delta=0.05,
        likelihood=Categorical(),
        include=bayesian_include(bert, "all"),
        name=f"mem{chunk}",
    )
    sentences = load_sentiment()["train"]["sentence"][:n]
    enc = dict(tok(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt"))
    guide.setup(**enc)
    mb, _ = peak_extra_memory_mb(
        lambda: PosteriorPredictive(model, guide, num_samples=draws, chunk_size=chunk)(**enc)
    )
    return mb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="fewer repeats, skip MiniLM, do not write RESULTS.md"
    )
    ap.add_argument("--svi-epochs", type=int, default=60, help="SVI epochs for the quality numbers")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # ratios on one core are stable; the machine has only two
    import pyro

    from pyrobayes import CategoricalPPD, PosteriorPredictive, fit

    x, y, x_test, y_test = digits()
    net, _ = train_mlp(x, y, epochs=30)
    n_ep = 13 if args.quick else 25
    fused, _, _ = svi_epoch_times(net, x, y, n_ep)
    pyro_t, _, _ = svi_epoch_times(net, x, y, 5 if args.quick else 9, pyro_path=True)
    med = {k: statistics.median(v) for k, v in fused.items()}
    ratio = paired_ratio(fused["svi"], fused["det"])
    ratio_loader = paired_ratio(fused["svi"], fused["det_loader"])
    ratio_pyro = paired_ratio(pyro_t["svi"], pyro_t["det"])
    ratio_spread = sorted(a / b for a, b in zip(fused["svi"], fused["det"]))
    q = len(ratio_spread) // 4

    # Quality: the fitted Bayesian MLP against the deterministic one
    pyro.clear_param_store()
    model, guide = build(net)
    fit(
        model,
        guide,
        (x, y),
        epochs=10 if args.quick else args.svi_epochs,
        batch_size=BATCH,
        lr=1e-3,
        progress=False,
        seed=0,
    )
    with torch.no_grad():
        det = evaluate(CategoricalPPD.from_logits(net(x_test)[None]), y_test)
    bayes = evaluate(PosteriorPredictive(model, guide, num_samples=100)(x_test), y_test)

    # Predictive speed and memory: the whole test split (compute-bound) and a batch of 32
    # queries (latency-bound, where per-draw overhead dominates)
    pred_rows = []
    all_digits = torch.cat([x, x_test])  # 1797 points: the normals' share of the time shrinks
    for n_query, draw_counts in (
        (len(x_test), (32, 100)),
        (32, (32, 100)),
        (len(all_digits), (32,)),
    ):
        xq = all_digits if n_query == len(all_digits) else x_test[:n_query]
        for draws in draw_counts:
            t = interleaved_seconds(
                {
                    "vec": lambda xq=xq, d=draws: predictive_seconds(model, guide, xq, d, True, 1),
                    "floor": lambda xq=xq, d=draws: deterministic_floor_seconds(net, xq, d, 1),
                },
                rounds=11 if args.quick else 15,
            )
            t_vec, t_floor = t["vec"], t["floor"]
            t_seq = predictive_seconds(model, guide, xq, draws, False, 2)
            m_vec, _ = peak_extra_memory_mb(
                lambda xq=xq, d=draws: predictive_seconds(model, guide, xq, d, True, 1)
            )
            m_seq, _ = peak_extra_memory_mb(
                lambda xq=xq, d=draws: predictive_seconds(model, guide, xq, d, False, 1)
            )
            pred_rows.append(
                [
                    n_query,
                    draws,
                    t_vec * 1e3,
                    t_seq * 1e3,
                    t_seq / t_vec,
                    m_vec,
                    m_seq,
                    t_floor * 1e3,
                    t_vec / t_floor,
                ]
            )

    # where the 597-point, 32-draw time goes: drawing the weights, then the forward passes
    split, n_weights, block = breakdown_seconds(
        model, guide, net, x_test, 32, 7 if args.quick else 11
    )
    fl = split["floor"]
    bound = fl + split["randn"]  # no draw can skip its normals or its forward pass
    split_rows = [
        [
            f"torch.randn of 32 x {n_weights} standard normals alone, {block} draws per "
            "block into one buffer (as the predictive draws them)",
            split["randn"] * 1e3,
            split["randn"] / fl,
        ],
        [
            "sample_posterior: 32 weight sets (one randn, addcmul)",
            split["sample"] * 1e3,
            split["sample"] / fl,
        ],
        [
            "forward_draws of 32 fixed draws (batched Linear chain)",
            split["forward"] * 1e3,
            split["forward"] / fl,
        ],
        [
            "PosteriorPredictive.outputs (draws + forward, block by block)",
            split["outputs"] * 1e3,
            split["outputs"] / fl,
        ],
        ["floor: 32 deterministic forward passes", fl * 1e3, 1.0],
        ["bound: the floor plus the normals (first row)", bound * 1e3, bound / fl],
    ]

    mem_rows = []
    if not args.quick:
        for chunk in (None, 4):
            mem_rows.append(
                ["none (all 32 at once)" if chunk is None else str(chunk), minilm_memory(chunk)]
            )

    text = [
        SECTION,
        "",
        f"Command: `python benchmarks/bench_svi.py{' --quick' if args.quick else ''}` — 1 thread, "
        f"{time.strftime('%Y-%m-%d')}, digits (1200 train / 597 test), MLP 64-256-256-10, batch {BATCH}.",
        "",
        "### SVI epoch versus a deterministic epoch (interleaved, median seconds per epoch)",
        "",
        f"{len(fused['svi'])} SVI epochs of `fit` (fused Trace_ELBO step, MOPED guide, Adam "
        "lr 1e-3); after each, one epoch of each deterministic baseline on a copy of the same "
        "MLP (`DeterministicEpoch` in this script: the `train_network` loop, i.e. a `randperm` "
        "of the in-memory tensors, `x[idx]` batches of 64, mean cross-entropy, torch's default "
        "`Adam(lr=1e-3)`; and the same loop over a shuffling `DataLoader(TensorDataset)`). "
        "Ratio: median of the per-epoch ratios (interquartile range in brackets).",
        "",
        markdown_table(
            ["path", "s / epoch", "ratio SVI / this"],
            [
                ["deterministic, indexed batches (the baseline)", med["det"], ratio],
                ["deterministic, DataLoader batches", med["det_loader"], ratio_loader],
                ["SVI, pyrobayes fit (fused Trace_ELBO, MOPED guide)", med["svi"], 1.0],
                [
                    "SVI, plain Pyro (SVI + pyro.optim.Adam, traced; own run)",
                    statistics.median(pyro_t["svi"]),
                    f"{ratio_pyro:.3g} x the baseline",
                ],
            ],
        ),
        "",
        f"Target SVI <= 2x deterministic: **{'met' if ratio <= 2 else 'NOT met'}** "
        f"({ratio:.2f}x [{ratio_spread[q]:.2f}, {ratio_spread[-1 - q]:.2f}]).",
        "",
        "### Posterior predictive: vectorised draws versus `pyro.infer.Predictive` (sequential)",
        "",
        markdown_table(
            [
                "query points",
                "draws",
                "vectorised ms",
                "Pyro Predictive ms",
                "speed-up",
                "vectorised peak MB",
                "Predictive peak MB",
                "det. floor ms",
                "vectorised / floor",
            ],
            pred_rows,
        ),
        "",
        f"Target >= 5x faster than `pyro.infer.Predictive` at 32 query points: "
        f"**{'met' if min(r[4] for r in pred_rows if r[0] == 32) >= 5 else 'NOT met'}** "
        f"({', '.join(f'{r[4]:.1f}x with {r[1]} draws' for r in pred_rows if r[0] == 32)}). "
        "At 597 points both paths are bound by the same matrix products; the vectorised path "
        "removes Pyro's per-draw overhead. The floor is `draws` deterministic forward passes "
        "of the same net, timed in turn with the vectorised predictive (best of several rounds). "
        f"Target <= 1.3x the floor at 597 points, 32 draws: "
        f"**{'met' if pred_rows[0][8] <= 1.3 else 'NOT met'}** ({pred_rows[0][8]:.2f}x). "
        "The predictive needs every weight of every draw: one standard normal per weight "
        f"and draw from torch's CPU generator alone costs {split['randn'] / fl:.2f}x the floor "
        "(first row below), on top of the forward passes, which cost what the floor costs; "
        f"so on one thread no exact sampler built on torch's generator can beat {bound / fl:.2f}x here, and "
        f"the predictive is {split['outputs'] / bound:.2f}x that bound. The normals cost the "
        "same at any number of query points while the floor grows with it: at all "
        f"{len(all_digits)} digits the predictive is {pred_rows[-1][8]:.2f}x the floor.",
        "",
        f"Breakdown at 597 points, 32 draws (best of {7 if args.quick else 11} rounds, parts "
        "timed in turn, same run):",
        "",
        markdown_table(["part", "ms", "ratio to floor"], split_rows),
        "",
        f"### Quality after {10 if args.quick else args.svi_epochs} SVI epochs (100 posterior draws)",
        "",
        markdown_table(
            ["model", "accuracy", "NLL", "ECE", "Brier"],
            [
                ["deterministic", det["accuracy"], det["nll"], det["ece"], det["brier"]],
                [
                    "Bayesian (MOPED + SVI)",
                    bayes["accuracy"],
                    bayes["nll"],
                    bayes["ece"],
                    bayes["brier"],
                ],
            ],
        ),
        "",
        f"Accuracy within 1 point: **{'met' if bayes['accuracy'] >= det['accuracy'] - 0.01 else 'NOT met'}**; "
        f"NLL no higher: **{'met' if bayes['nll'] <= det['nll'] else 'NOT met'}**.",
    ]
    if mem_rows:
        text += [
            "",
            "### MiniLM (all 22.7M weights Bayesian): 32-draw predictive over 256 sentences",
            "",
            markdown_table(["chunk size", "peak extra memory MB"], mem_rows),
        ]
    report = "\n".join(text)
    print(report)
    print(
        json.dumps(
            {
                "svi_ratio": ratio,
                "pred_speedup_32_points": min(r[4] for r in pred_rows if r[0] == 32),
                "pred_floor_ratio_597_32": pred_rows[0][8],
                "det": det,
                "bayes": bayes,
            }
        )
    )
    if not args.quick:
        write_section(SECTION, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
