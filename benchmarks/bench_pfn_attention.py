"""What the PFN's split attention buys: its encoder against torch's masked encoder, in one run.

The PFN's attention pattern (every token sees the training tokens, a query also sees itself)
is computed by ``pyrobayes.pfn.model._pfn_encoder``: the training rows through one unmasked
fused attention, the queries scoring the training keys plus their own key. The definition it
is tested against (``tests/test_pfn_model.py``) is torch's ``nn.TransformerEncoder`` with the
boolean mask over the whole ``(n + m)^2`` sequence, which is what the PFN ran before. This
script times both, alternating, on the shipped ``bnn-tabular-classifier`` (d_model 128,
4 layers), one thread:

* ``predict`` of a tabular classifier (n training rows, 200 queries, 5 classes, 20 features)
  with 1, 2 and 4 class relabellings, the median of 5 calls each;
* one training step's forward and backward through the encoder (a batch of data sets with
  n training rows and 64 queries each, about 4k tokens).

Reproduce::

    python benchmarks/bench_pfn_attention.py            # writes its RESULTS.md section
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _results import markdown_table, write_section  # noqa: E402

import pyrobayes.pfn.model as pfn_model  # noqa: E402
from pyrobayes.pfn import pretrained  # noqa: E402

SECTION = "## bench_pfn_attention.py"


def masked_encoder(encoder, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """torch's encoder with the PFN's pattern as a boolean mask (True = blocked)."""
    size = tokens.shape[1]
    blocked = torch.ones(size, size, dtype=torch.bool, device=tokens.device)
    blocked[:, :n] = False
    q = torch.arange(n, size, device=tokens.device)
    blocked[q, q] = False
    return encoder(tokens, mask=blocked)


ENCODERS = {"masked (torch)": masked_encoder, "split (pyrobayes)": pfn_model._pfn_encoder}


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def time_predict(pfn, n: int, perms: int, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(n)
    xt, xq = torch.randn(n, 20, generator=g), torch.randn(200, 20, generator=g)
    yt = torch.randint(0, 5, (n,), generator=g)
    out = {}
    for name, enc in ENCODERS.items():
        pfn_model._pfn_encoder = enc
        try:
            pfn.predict(xt, yt, xq[:8], num_classes=5, class_permutations=perms)  # warm-up
            out[name] = _median_time(
                lambda: pfn.predict(xt, yt, xq, num_classes=5, class_permutations=perms), repeats
            )
        finally:
            pfn_model._pfn_encoder = ENCODERS["split (pyrobayes)"]
    return out


def time_train_step(pfn, n: int, repeats: int) -> dict[str, float]:
    batch = max(1, 4096 // (n + 64))
    tokens = torch.randn(
        batch, n + 64, pfn.config.d_model, generator=torch.Generator().manual_seed(0)
    )
    pfn.train()
    out = {}
    for name, enc in ENCODERS.items():

        def step(enc=enc):
            t = tokens.clone().requires_grad_()
            enc(pfn.encoder, t, n).sum().backward()

        step()
        out[name] = _median_time(step, repeats)
    pfn.eval()
    return out


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pfn = pretrained("bnn-tabular-classifier").eval()
    masked, split = ENCODERS
    rows = []
    for n in (30, 100, 500, 1000):
        for perms in (1, 2, 4):
            t = time_predict(pfn, n, perms, args.repeats)
            rows.append([f"predict, n={n}, {perms} relabelling(s)", f"{1000 * t[masked]:.1f}",
                         f"{1000 * t[split]:.1f}", f"{t[masked] / t[split]:.2f}"])  # fmt: skip
            print(rows[-1], flush=True)
    for n in (64, 512, 1000):
        t = time_train_step(pfn, n, args.repeats)
        rows.append([f"train step fwd+bwd, n={n} (+64 queries)", f"{1000 * t[masked]:.1f}",
                     f"{1000 * t[split]:.1f}", f"{t[masked] / t[split]:.2f}"])  # fmt: skip
        print(rows[-1], flush=True)
    header = ["case", "masked (torch) ms", "split (pyrobayes) ms", "masked / split"]
    text = f"""{SECTION}

`python benchmarks/bench_pfn_attention.py` (shipped `bnn-tabular-classifier`, d_model 128,
4 layers; medians of {args.repeats} timings, the two encoders alternating per case; machine:
{platform.machine()}, {os.cpu_count()} cores, one torch thread, load average
{os.getloadavg()[0]:.1f} at the end, shared with other jobs). "masked": torch's
`nn.TransformerEncoder` with the PFN's attention pattern as a boolean mask over the whole
sequence (what the PFN ran before; on CPU its masked softmax dominated); "split": the PFN's
`_pfn_encoder` (training rows through one unmasked fused attention, queries scoring the
training keys plus their own; equal to the masked encoder in `tests/test_pfn_model.py`).

{markdown_table(header, rows)}
"""
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return text


if __name__ == "__main__":
    main()
