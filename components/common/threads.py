"""Threads for per-example numpy work (numpy's sorts and ufuncs release the GIL): how many, and an ordered map."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Optional, Sequence


def available() -> int:
    """The cores this process may use; ``PRIVACY_AUDIT_THREADS`` overrides (1: everything serial)."""
    env = os.environ.get("PRIVACY_AUDIT_THREADS")
    if env:
        return max(1, int(env))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def ordered_map(fn: Callable[[Any], Any], items: Sequence[Any],
                start_order: Optional[Sequence[int]] = None) -> Iterator[Any]:
    """``fn`` over ``items`` on up to :func:`available` threads, started in ``start_order`` (indices; default:
    in order) and yielded in the items' order."""
    threads = min(available(), len(items))
    if threads <= 1:
        yield from map(fn, items)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="privacy-audit") as pool:
        futures = {i: pool.submit(fn, items[i]) for i in (start_order or range(len(items)))}
        for i in range(len(items)):
            yield futures[i].result()
