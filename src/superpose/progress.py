"""Progress of a long run: a tqdm bar on a terminal, plain lines anywhere else.

tqdm redraws its bar with carriage returns several times a second. In a log file (``nohup``,
a batch job, CI) that is one endless line that ``tail`` cannot read and that grows by
megabytes over a run of hours. :class:`LineProgress` takes the bar's place there: a
self-contained line (step, percentage, rate, time left, the bar's postfix) at most every
``interval`` seconds on stderr, and the bar's ``write`` lines on stdout as they come (where
``tqdm.write`` puts them).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm


def format_seconds(seconds: float) -> str:
    """``3725 -> '1:02:05'``, ``65 -> '1:05'`` (hours only when there are any)."""
    s = max(int(round(seconds)), 0)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LineProgress:
    """The subset of tqdm's interface the training loop uses, as plain, timed lines.

    The rate counts only the steps made since this object was created, so a resumed run
    reports its own speed, not the average since step 0.
    """

    def __init__(self, total: int, initial: int = 0, desc: str = "", *,
                 interval: float = 60.0, file: TextIO | None = None,
                 out: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.total, self.n, self.desc = int(total), int(initial), desc
        self.interval, self.clock = float(interval), clock
        self.file = file if file is not None else sys.stderr
        self.out = out
        self._n0, self._t0 = self.n, clock()
        self._last, self._last_n = self._t0, self.n
        self._postfix: dict[str, Any] = {}
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self._last >= self.interval:
            self._emit(now)

    def set_postfix(self, **values: Any) -> None:
        self._postfix = values

    def write(self, line: str) -> None:
        """A message between progress lines (tqdm's ``write``): on ``out``, default stdout."""
        print(line, file=self.out if self.out is not None else sys.stdout, flush=True)

    def close(self) -> None:
        """A last line if steps were made since the last one; idempotent."""
        if not self._closed and self.n != self._last_n:
            self._emit(self.clock())
        self._closed = True

    def line(self, now: float) -> str:
        """The progress line at time ``now`` (without a newline)."""
        done = self.n - self._n0
        elapsed = now - self._t0
        parts = [f"step {self.n}/{self.total}"]
        if self.total > 0:
            parts[0] += f" ({100.0 * self.n / self.total:.1f} %)"
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.2f} step/s")
            parts.append(f"{format_seconds(elapsed)} elapsed")
            if self.total > self.n:
                parts.append(f"{format_seconds((self.total - self.n) / rate)} left")
        parts += [f"{k}={v}" for k, v in self._postfix.items()]
        head = f"{self.desc}: " if self.desc else ""
        return head + ", ".join(parts)

    def _emit(self, now: float) -> None:
        print(self.line(now), file=self.file, flush=True)
        self._last, self._last_n = now, self.n


Bar = tqdm | LineProgress  # what the training loop drives


def make_progress(total: int, initial: int, desc: str, *, enabled: bool,
                  file: TextIO | None = None, interval: float = 60.0) -> Bar:
    """A tqdm bar where ``file`` (default stderr) is a terminal, :class:`LineProgress`
    elsewhere; a disabled tqdm bar when ``enabled`` is false."""
    file = file if file is not None else sys.stderr
    if enabled and not _is_terminal(file):
        return LineProgress(total, initial, desc, interval=interval, file=file)
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step",
                dynamic_ncols=True, leave=False, file=file)


def _is_terminal(file: TextIO) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def clear_of_bars(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` that lifts any tqdm bar off the terminal while it writes (a method's own lines,
    such as CLNP's, come while the training bar is drawn)."""

    def write(line: str) -> None:
        with tqdm.external_write_mode():
            log(line)

    return write
