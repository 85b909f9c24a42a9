"""Progress on stderr for slow steps: a spinner on a terminal, silence otherwise (or forced on)."""
from __future__ import annotations

import contextlib
import sys
import time

__all__ = ["Progress"]


class Progress:
    """``with progress.step("capturing zoo:gpt"): ...`` shows the step and how long it took.

    Enabled on a TTY by default; ``enabled=True`` forces plain lines (useful in logs), ``False``
    silences it.
    """

    def __init__(self, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._console = None
        if self.enabled and self.stream.isatty():
            try:
                from rich.console import Console
                self._console = Console(file=self.stream)
            except ImportError:
                self._console = None

    @contextlib.contextmanager
    def step(self, text: str):
        start = time.perf_counter()
        if not self.enabled:
            yield
            return
        if self._console is not None:
            with self._console.status(text + " ..."):
                yield
        else:
            print(f"{text} ...", file=self.stream, flush=True)
            yield
        seconds = time.perf_counter() - start
        print(f"{text}: done in {seconds:.2f} s", file=self.stream, flush=True)

    def info(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)
