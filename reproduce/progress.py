"""Progress bars: one live line per model (training epoch, attack column), text only, erased when done.

Text bars rather than widgets: a widget bar saved by a headless run (papermill, `make reproduce`) stays
frozen at "0%" in the executed notebook, while a text bar's carriage returns collapse to nothing once it
is erased (the runner asks papermill to merge each cell's stream output). They write to stderr, so the
runner's terminal log keeps only the lines the notebooks print.
"""
from __future__ import annotations

from tqdm.std import tqdm


def bar(iterable, desc: str | None, enabled: bool = True, **kw):
    """`iterable`, with a text progress bar when `enabled`; it is erased when the loop ends."""
    return tqdm(iterable, desc=desc, disable=not enabled, leave=False, mininterval=1.0, dynamic_ncols=True, **kw)
