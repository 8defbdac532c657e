"""Progress bars: one live line per model (training epoch, attack column), text only, erased when done;
and what the libraries an attack calls say while a bar is live.

Text bars rather than widgets: a widget bar saved by a headless run (papermill, `make reproduce`) stays
frozen at "0%" in the executed notebook, while a text bar's carriage returns collapse to nothing once it
is erased (the runner asks papermill to merge each cell's stream output). They write to stderr, so the
runner's terminal log keeps only the lines the notebooks print.

A library that writes to stderr while a bar is live (AutoAttack's checks: `warnings.warn` or its
"auto-attack" logger) breaks the bar's line, and the executed notebook keeps the bar frozen mid-line.
`library_messages` catches those messages instead; the caller keeps them as data (evaluation caches the
zero-gradient count of AutoAttack's check with the column) and prints the rest once the bar is gone.
"""
from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager

from tqdm.std import tqdm

LIBRARY_LOGGERS = ("auto-attack",)  # pyautoattack's logger (its checks warn through it)
# AutoAttack's check_zero_gradients (pyautoattack/checks.py): DLR input gradients that are exactly zero
ZERO_GRADIENT_MESSAGE = re.compile(r"there are (\d+) points with zero gradient")


def bar(iterable, desc: str | None, enabled: bool = True, **kw):
    """`iterable`, with a text progress bar when `enabled`; it is erased when the loop ends."""
    return tqdm(iterable, desc=desc, disable=not enabled, leave=False, mininterval=1.0, dynamic_ncols=True, **kw)


class _Collect(logging.Handler):
    def __init__(self, into: list):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record):
        self.into.append(record.getMessage())


@contextmanager
def library_messages():
    """Collect, instead of printing, the warnings and the library loggers' records (LIBRARY_LOGGERS) raised
    inside the block: yields a list that holds them, in order, once the block has ended."""
    caught: list[str] = []
    handler = _Collect(caught)
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    propagate = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
    try:
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            yield caught
    finally:
        for lg, p in zip(loggers, propagate):
            lg.removeHandler(handler)
            lg.propagate = p
        caught.extend(str(w.message) for w in recorded)


def zero_gradient_points(messages: list[str]) -> int | None:
    """The most points AutoAttack's zero-gradient check reported in one of `messages` (one attack run on
    one batch; a targeted attack checks once per target class), or None where it reported none."""
    counts = [int(m.group(1)) for m in map(ZERO_GRADIENT_MESSAGE.search, messages) if m]
    return max(counts) if counts else None
