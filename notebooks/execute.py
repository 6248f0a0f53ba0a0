"""Run the tutorial notebooks in their full setting and write the outputs into the files.

``make notebooks`` (or ``python notebooks/execute.py [NAME.ipynb ...]``) executes each
notebook top to bottom with ``PYROBAYES_SMOKE`` unset and records how it was run in the
notebook's metadata (``metadata.pyrobayes``: setting, seconds, date, versions), so that
``tests/test_notebooks.py`` can check that the committed outputs come from a full run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def source_digest(nb: nbformat.NotebookNode) -> str:
    """SHA-256 of the code cells' sources: tells whether the outputs belong to this code."""
    code = "\n# ---- cell ----\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return hashlib.sha256(code.encode()).hexdigest()


def execute(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    env_smoke = os.environ.pop("PYROBAYES_SMOKE", None)  # the full setting, whatever the shell says
    os.environ.setdefault("MPLBACKEND", "Agg")
    t0 = time.perf_counter()
    try:
        NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
        ).execute()
    finally:
        if env_smoke is not None:
            os.environ["PYROBAYES_SMOKE"] = env_smoke
    seconds = time.perf_counter() - t0
    import torch

    nb.metadata["pyrobayes"] = {
        "setting": "full",
        "source_sha256": source_digest(nb),
        "seconds": round(seconds, 1),
        "executed": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"),
    }
    tmp = path.with_name(path.name + ".tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)  # a failed run never leaves a half-written notebook
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="*", help="notebook files (default: all in notebooks/)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = p.parse_args(argv)
    paths = [Path(n) for n in args.notebooks] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        print(f"{path.name}: running ...", flush=True)
        seconds = execute(path, args.timeout)
        print(f"{path.name}: {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
