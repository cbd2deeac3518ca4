"""Progress bars on stderr for long work (tqdm), silent when disabled or not a terminal-worthy job."""
from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], *, enabled: bool, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar on stderr when ``enabled`` and stderr is a terminal (a bar in a
    pipe or a log file is only noise between the lines of real output); otherwise yield them unchanged."""
    if not enabled:
        yield from items
        return
    yield from tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
                    disable=None)  # None: off when stderr is not a terminal
