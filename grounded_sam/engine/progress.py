"""Progress of a labelling run: a tqdm bar (images/s, ETA) on a terminal, plain lines
otherwise (a log file or CI gets one line every 10% or 30 s, never a carriage-return mess)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``; ``3.25`` -> ``"3.2 s"``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class Progress:
    """Counts images as their units are committed and shows the rate and ETA.

    Args:
        total: images to label in this run.
        desc: the label in front of the bar / lines.
        stream: where to write (default stderr); ``None`` disables output.
        every: seconds between plain lines.
    """

    def __init__(
        self,
        total: int,
        desc: str = "label",
        stream: TextIO | None = sys.stderr,
        every: float = 30.0,
    ) -> None:
        self.total, self.desc, self.stream, self.every = total, desc, stream, every
        self.done = self.failed = 0
        self.start = time.perf_counter()
        self._last_line = self.start
        self._next_fraction = 0.1
        self._bar: Any = None
        if stream is not None and total and getattr(stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit="img", file=stream, leave=False, dynamic_ncols=True
            )

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        if self._bar is not None:
            self._bar.update(1)
            if not ok:
                self._bar.set_postfix(failed=self.failed, refresh=False)
            return
        if self.stream is None or not self.total:
            return
        now = time.perf_counter()
        fraction = self.done / self.total
        if fraction >= self._next_fraction or now - self._last_line >= self.every:
            while self._next_fraction <= fraction:
                self._next_fraction += 0.1
            self._last_line = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = format_duration(left) if rate > 0 else "?"
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            f"{self.desc}: {self.done}/{self.total} images ({100 * self.done / self.total:.0f}%), "
            f"{rate:.2f} images/s, ETA {eta}{failed}"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
