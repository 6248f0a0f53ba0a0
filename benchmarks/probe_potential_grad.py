"""Speed of the torch NUTS potential: one value + gradient of ``Potential`` (what Pyro's NUTS
evaluates per leapfrog step) on the default 1-D regression model (2,701 weights) at N = 20
and N = 200 training points. Prints JSON: per setting ``[median, best]`` microseconds per
call over rounds of calls, and the potential's value at the point (the same number before
and after a change of the forward pass).

Reproduce (from a checkout's root; run two checkouts alternately to compare)::

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/probe_potential_grad.py
"""

from __future__ import annotations

import json
import statistics
import time

import torch


def timed(fn, calls: int = 200, rounds: int = 9) -> tuple[float, float]:
    """``(median, best)`` microseconds per call over ``rounds`` rounds of ``calls`` calls."""
    for _ in range(20):
        fn()
    per_call = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(per_call), min(per_call)


def main() -> None:
    from pyrobayes.infer.nuts.potential import FLAT, Potential
    from pyrobayes.models.mlp import default_regression_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = {}
    for n in (20, 200):
        model = default_regression_model(name=f"m{n}")
        x = torch.linspace(-1, 1, n)[:, None]
        pot = Potential(model, x, torch.sin(3 * x[:, 0]))
        u = pot.pack(pot.unconstrain(pot.prior_draw())).requires_grad_(True)

        def value_and_grad(pot=pot, u=u):
            torch.autograd.grad(pot({FLAT: u}), u)

        out[f"N{n}_us"] = timed(value_and_grad)
        with torch.no_grad():
            out[f"N{n}_value"] = float(pot({FLAT: u}))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
