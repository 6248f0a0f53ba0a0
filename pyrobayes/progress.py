"""Progress output for long loops: a tqdm bar in terminals and notebooks, a few plain lines
in logs.

With stdout/stderr redirected to a file, tqdm writes one carriage-return update per
refresh, which turns a log into thousands of overwritten lines. :func:`progress_bar` keeps
tqdm where someone watches (a TTY, or Jupyter) and otherwise prints a plain line at the
start, about every 10%, at least every :data:`MAX_GAP_S` seconds and at the end. Work without
a loop of its own (a baseline's fit, a long predictive) is covered by :class:`Heartbeat`: a
line naming what runs, every ``every`` seconds, from a background thread.

Example::

    >>> from pyrobayes.progress import progress_bar
    >>> total = 0
    >>> for i in progress_bar(range(3), enabled=False, desc="demo"):
    ...     total += i
    >>> total
    3
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

__all__ = [
    "progress_bar",
    "PlainProgress",
    "Heartbeat",
    "heartbeat_status",
    "log_heartbeat_enabled",
    "MAX_GAP_S",
]

# Longest silence of a plain (log) progress output, seconds: a log shows a line at least
# this often (issue 21: "progress lines in logs at least every 30 s").
MAX_GAP_S = 25.0


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class PlainProgress:
    """Iterate and print ``desc: i/total (p%) key=value, ... [elapsed]`` lines at the start,
    at every ``every`` fraction of ``total`` and at the end (no carriage returns).

    Example::

        >>> import io
        >>> from pyrobayes.progress import PlainProgress
        >>> log = io.StringIO()
        >>> bar = PlainProgress(range(4), desc="fit", total=None, unit="step", every=0.5,
        ...                     file=log)
        >>> for step in bar:
        ...     bar.set_postfix(loss=4 - step)
        >>> print(log.getvalue(), end="")
        fit: 0/4 step (0%) [...s]
        fit: 2/4 step (50%) loss=3 [...s]
        fit: 4/4 step (100%) loss=1 [...s]
    """

    def __init__(
        self,
        iterable: Iterable,
        *,
        desc: str,
        total: int | None,
        unit: str,
        every: float = 0.1,
        file: TextIO | None = None,
    ):
        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, every
        self.total = total if total is not None else _len_or_none(iterable)
        self.file = file
        self.postfix: dict[str, Any] = {}
        self.n, self._t0, self._closed = 0, time.perf_counter(), False
        self._last = self._t0

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = kwargs

    def _line(self) -> None:
        parts = [f"{self.desc}: {self.n}"]
        if self.total:
            parts[0] += f"/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        self._last = time.perf_counter()
        parts.append(f"[{self._last - self._t0:.1f}s]")
        print(" ".join(parts), file=self.file or sys.stderr, flush=True)

    def __iter__(self) -> Iterator:
        self._line()
        for item in self.iterable:
            yield item
            self.n += 1
            if self.total and self.n < self.total:
                # integer milestones: a float running fraction skips some (0.3 - 0.3 % 0.1)
                parts = max(round(1 / self.every), 1)
                if self.n * parts // self.total > (self.n - 1) * parts // self.total:
                    self._line()
                    continue
            if time.perf_counter() - self._last >= MAX_GAP_S and (
                not self.total or self.n < self.total
            ):
                self._line()
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._line()


class _Silent:
    def __init__(self, iterable: Iterable):
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable)

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _len_or_none(iterable: Iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress_bar(
    iterable: Iterable,
    *,
    enabled: bool = True,
    desc: str = "",
    total: int | None = None,
    unit: str = "it",
    file: TextIO | None = None,
):
    """Wrap ``iterable`` with progress output; the result has ``set_postfix`` and ``close``.

    ``enabled=False``: nothing printed. In a terminal (stderr is a TTY) or Jupyter: a tqdm
    bar. Otherwise (logs, CI, pipes): a :class:`PlainProgress` with about 11 lines.

    Example::

        >>> import io
        >>> from pyrobayes.progress import progress_bar
        >>> log = io.StringIO()                    # not a terminal: plain lines
        >>> bar = progress_bar(range(20), desc="epochs", file=log)
        >>> type(bar).__name__, sum(bar)
        ('PlainProgress', 190)
        >>> len(log.getvalue().splitlines())       # start, every 10%, end
        11
        >>> quiet = io.StringIO()
        >>> sum(progress_bar(range(20), enabled=False, file=quiet)), quiet.getvalue()
        (190, '')
    """
    if not enabled:
        return _Silent(iterable)
    stream = file or sys.stderr
    if _in_notebook() or _is_tty(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, file=file)
    return PlainProgress(iterable, desc=desc, total=total, unit=unit, file=file)


_ACTIVE: list[Heartbeat] = []


class Heartbeat:
    """A context manager that prints ``[elapsed] status (for N s)`` on ``file`` (default
    stderr) every ``every`` seconds from a daemon thread while its block runs, so that a
    log shows a line at least that often even inside fits without a loop of their own;
    :func:`heartbeat_status` (or :meth:`set`) says what runs. ``enabled=False``: silent.

    Example::

        >>> import io
        >>> log = io.StringIO()
        >>> with Heartbeat(every=0.05, file=log) as hb:
        ...     hb.set("split 1/2: MC dropout")
        ...     time.sleep(0.2)
        >>> "split 1/2: MC dropout" in log.getvalue()
        True
    """

    def __init__(self, every: float = MAX_GAP_S, file: TextIO | None = None, enabled: bool = True):
        import threading

        if not every > 0:
            raise ValueError(f"every must be positive, got {every}")
        self.every, self.file, self.enabled = every, file, enabled
        self.status, self._since = "starting", time.perf_counter()
        self._t0 = self._since
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def set(self, status: str) -> None:
        self.status, self._since = status, time.perf_counter()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            now = time.perf_counter()
            print(
                f"[{now - self._t0:.0f} s] {self.status} (for {now - self._since:.0f} s)",
                file=self.file or sys.stderr,
                flush=True,
            )

    def __enter__(self) -> Heartbeat:
        _ACTIVE.append(self)
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()
        _ACTIVE.remove(self)


def heartbeat_status(status: str) -> None:
    """Tell the innermost active :class:`Heartbeat` what runs now (no-op without one).

    Example::

        >>> heartbeat_status("nothing listens")  # no heartbeat: nothing happens
    """
    if _ACTIVE:
        _ACTIVE[-1].set(status)


def log_heartbeat_enabled(file: TextIO | None = None, bars: bool = True) -> bool:
    """Whether a job's :class:`Heartbeat` should print: always in logs (stderr not a TTY,
    not Jupyter); in a terminal only when progress bars are off.

    Example::

        >>> import io
        >>> log_heartbeat_enabled(io.StringIO())  # a file, not a terminal: a log
        True
    """
    stream = file or sys.stderr
    return not bars or not (_in_notebook() or _is_tty(stream))
