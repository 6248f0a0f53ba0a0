"""Shared by the benchmark scripts: each rewrites only its own section of RESULTS.md."""

from __future__ import annotations

import os
import re
import resource
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def mixture_nll_and_mc_se(log_p, batches: int = 10) -> tuple[float, float]:
    """Held-out NLL of an equal-weight mixture of draws, and its Monte Carlo standard error.

    ``log_p[s, i]`` is draw ``s``'s log-density of test point ``i``. The error comes from the
    NLLs of ``batches`` mixtures of consecutive draws (batch means absorb a chain's
    autocorrelation): the full mixture's NLL varies like one batch's, scaled by
    ``1/sqrt(batches)``."""
    import math

    import torch

    def nll(lp):
        return float(-(torch.logsumexp(lp, 0) - math.log(lp.shape[0])).mean())

    size = log_p.shape[0] // batches
    parts = torch.tensor([nll(log_p[b * size : (b + 1) * size]) for b in range(batches)])
    return nll(log_p), float(parts.std() / math.sqrt(batches))


def write_section(section: str, text: str) -> None:
    """Replace the block that starts with the heading ``section`` (up to the next ``## ``)."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = text.rstrip() + "\n\n"
    new = pattern.sub(lambda _: body, old) if pattern.search(old) else old.rstrip() + "\n\n" + body
    RESULTS.write_text(new)


def max_rss_mb() -> float:
    """Peak resident memory of this process so far (MB); Linux reports KiB, macOS bytes."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_extra_memory_mb(fn, interval: float = 0.0005) -> tuple[float, object]:
    """Run ``fn()``; return (peak resident memory above the level before it, in MB, and
    its result). A sampling thread reads /proc (Linux): ``ru_maxrss`` would only report a
    new peak if it beat every earlier one in the process, e.g. the imports."""
    import gc

    gc.collect()
    base, peak, done = current_rss_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], current_rss_mb())
            time.sleep(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        done.set()
        t.join()
    return max(peak[0], current_rss_mb()) - base, out


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
