"""A dependency-free progress bar for long CLI jobs (training, evaluation)."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


class Progress:
    """``for x in Progress(items, "eval"): ...`` prints ``desc [####....] i/n rate eta`` to
    stderr, redrawn in place on a terminal and every ``every_s`` seconds otherwise."""

    def __init__(self, items: Iterable[T], desc: str = "", total: Optional[int] = None, enabled: bool = True,
                 every_s: float = 10.0, unit: str = "it"):
        self.items = items
        self.desc = desc
        self.total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.every_s = every_s if not self.tty else 0.1
        self.unit = unit
        self.postfix = ""

    def set_postfix(self, text: str) -> None:
        self.postfix = text

    def _line(self, i: int, elapsed: float) -> str:
        rate = i / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = i / self.total
            bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
            eta = (self.total - i) / rate if rate > 0 else 0.0
            return f"{self.desc} [{bar}] {i}/{self.total} {rate:.2f} {self.unit}/s eta {eta:.0f}s {self.postfix}"
        return f"{self.desc} {i} {rate:.2f} {self.unit}/s {self.postfix}"

    def __iter__(self) -> Iterator[T]:
        start = last = time.perf_counter()
        i = 0
        for item in self.items:
            yield item
            i += 1
            now = time.perf_counter()
            if self.enabled and (now - last >= self.every_s or i == self.total):
                last = now
                line = self._line(i, now - start)
                sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
                sys.stderr.flush()
        if self.enabled and self.tty:
            sys.stderr.write("\n")
