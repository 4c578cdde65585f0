"""What a training run shows on stderr: a progress bar on a terminal, one plain line per metrics
record elsewhere (a log file, a pipe: a bar is never drawn there), and a line per validation; all
within 80 columns."""

from __future__ import annotations

import sys
import textwrap
from contextlib import contextmanager

from amir_cli.tables import progress_bar

WIDTH = 80
LOG_SECONDS = 60.0  # a training record (and its line) at least this often, so a slow run's log moves


def wrap(text: str) -> str:
    """``text`` wrapped at 80 columns, never inside a word or a path."""
    return textwrap.fill(text, WIDTH, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)


def say(text: str, quiet: bool = False) -> None:
    """A message on stderr, wrapped at 80 columns."""
    if not quiet:
        sys.stderr.write(wrap(text) + "\n")
        sys.stderr.flush()


class TrainingReport:
    """The bar (terminal only) and the lines of one process's run; silent when ``quiet``."""

    def __init__(self, quiet: bool, total: int):
        from rich.console import Console

        self.quiet, self.total = quiet, int(total)
        self.console = Console(stderr=True)
        self.progress, self._bar = None, None

    @contextmanager
    def running(self, start: int):
        """The progress bar from iteration ``start`` while the loop runs (on a terminal)."""
        if self.quiet or not self.console.is_terminal:
            yield self
            return
        self.progress = training_bar(self.console)
        with self.progress:
            self._bar = self.progress.add_task("train", total=self.total, completed=start, stats="")
            try:
                yield self
            finally:
                self.progress = None

    def update(self, iteration: int, stats: str) -> None:
        if self.progress is not None:
            self.progress.update(self._bar, completed=iteration, stats=stats)

    def line(self, text: str) -> None:
        """A message above the bar (or on its own without one)."""
        if self.progress is not None:
            self.progress.console.print(wrap(text), markup=False, highlight=False, soft_wrap=True)
        else:
            say(text, self.quiet)

    def record(self, rec: dict) -> None:
        """A training metrics record, as a line where no bar shows it."""
        if self.progress is None:
            self.line(f"iteration {rec['iteration']}/{self.total}: loss {rec['loss']:.4f}, {rec['it_per_s']:.2f} it/s")

    def validation(self, iteration: int, gain: dict, best: bool) -> None:
        gains = ", ".join(f"{task.split('-')[0]} {g:+.2f} dB" for task, g in gain.items())
        self.line(f"validation at {iteration}: {gains} over the input" + (" (best so far)" if best else ""))


def training_bar(console):
    # "train ━━━━ 200000/200000 loss 0.0119 2.56 it/s 0:02:25 0:10:36": at most 80 columns
    return progress_bar(console, "[bold]train", bar_width=14, fields=("stats",), transient=False)

