"""Memory this process may use, and what an Examples split needs once loaded into memory (no TFX).

The DPTrainer's Poisson sampler and the reference models hold their split in memory as arrays. A split larger
than the machine is refused before it is read (:func:`check_split_fits`), with the size it would need and
what to do, instead of the process being killed halfway. ``PRIVACY_AUDIT_MEMORY_LIMIT`` (e.g. ``8G``,
``512M``, bytes) caps what is taken as available, for a shared machine or a container whose limit the kernel
does not show.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import struct
from typing import Optional, Sequence

from privacy_audit.components.common import io

ENV_LIMIT = "PRIVACY_AUDIT_MEMORY_LIMIT"
#: Bytes per loaded example besides its serialized record and feature copies: the bytes object and its list
#: slot (~41), its hex id string and list slot (~97), the sort's keys and indices (~50), and what the
#: allocator keeps of the per-chunk decoding buffers: calibrated on the peak RSS of loading 100k and 500k
#: 21-feature examples (measured ~1.3 KB per example, of which 359 serialized).
PER_EXAMPLE_OVERHEAD = 450
#: Copies of the float32 feature matrix alive at once while loading (decoded columns, x, x in id order, and
#: the decoder's row splits of one chunk).
FEATURE_COPIES = 4
#: Refused when the estimate exceeds this share of the available memory (the model and TF take the rest).
USABLE_SHARE = 0.8
_SAMPLE_BYTES = 4 << 20
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def parse_size(text: str) -> int:
    """``"8G"`` / ``"512M"`` / ``"1.5G"`` / ``"1000000"`` → bytes; ValueError otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"{ENV_LIMIT}={text!r} is not a size (e.g. 8G, 512M or a number of bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes() -> Optional[int]:
    """The memory this process can still take: the least of ``MemAvailable`` (/proc/meminfo), the cgroup's
    limit minus its usage, and ``PRIVACY_AUDIT_MEMORY_LIMIT``; None when none of them is known."""
    known = []
    if os.environ.get(ENV_LIMIT):
        known.append(parse_size(os.environ[ENV_LIMIT]))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    known.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        lim, used = _read_int(limit), _read_int(usage)
        if lim is not None and used is not None and lim < 2 ** 60:
            known.append(max(0, lim - used))
    return min(known) if known else None


@dataclasses.dataclass(frozen=True)
class SplitEstimate:
    """An Examples split's size, estimated from its files' compressed sizes and a sample of its first file."""
    examples: int
    record_bytes: float
    features: int
    needed_bytes: int


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GB" if n >= 2 ** 29 else f"{n / 2 ** 20:.0f} MB"


def estimate_split(files: Sequence[str]) -> Optional[SplitEstimate]:
    """Examples, mean serialized record size, feature count and the bytes :func:`examples.load_examples` needs
    for the GZIP TFRecord ``files`` (None when the first file holds no record). Reads at most a few MB."""
    if not files:
        return None
    total = sum(io.size(f) for f in files)
    with io.open(files[0], "rb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            sample = gz.read(_SAMPLE_BYTES)
            at_end = not gz.read(1)
        used = raw.tell()
    count, pos, first = 0, 0, None
    while pos + 12 <= len(sample):
        (length,) = struct.unpack_from("<Q", sample, pos)
        if pos + 12 + length + 4 > len(sample):
            break
        if first is None:
            first = sample[pos + 12:pos + 12 + length]
        count += 1
        pos += 12 + length + 4
    if not count:
        return None
    framed = pos / count  # bytes per record in the file, framing included
    ratio = len(sample) / max(used, 1) if not at_end else len(sample) / max(io.size(files[0]), 1)
    examples = int(round(total * ratio / framed))
    import tensorflow as tf

    features = len(tf.train.Example.FromString(first).features.feature)
    record = framed - 16
    needed = int(examples * (record + PER_EXAMPLE_OVERHEAD + FEATURE_COPIES * 4 * features))
    return SplitEstimate(examples=examples, record_bytes=record, features=features, needed_bytes=needed)


def check_split_fits(files: Sequence[str], what: str, available: Optional[int] = None) -> Optional[SplitEstimate]:
    """Refuses (MemoryError naming the sizes and what to do) a split whose in-memory load would not fit in
    ``USABLE_SHARE`` of the available memory (``available``: bytes, default :func:`available_bytes`).
    Returns the estimate (None when the files hold nothing or the memory is unknown)."""
    est = estimate_split(files)
    avail = available_bytes() if available is None else available
    if est is None or avail is None:
        return est
    if est.needed_bytes > USABLE_SHARE * avail:
        raise MemoryError(
            f"{what} holds about {est.examples:,} examples of {est.features} features ({est.record_bytes:.0f} "
            f"bytes each serialized); loading it into memory for training needs about {_gib(est.needed_bytes)} "
            f"but {_gib(avail)} is available (limit {int(USABLE_SHARE * 100)}%: "
            f"{_gib(USABLE_SHARE * avail)}). Train on a sample of the data (e.g. a smaller CSV, or an ExampleGen "
            f"split of a fraction of it), or run on a machine with more memory (set {ENV_LIMIT} to override the "
            "limit)")
    return est


def release_freed_memory() -> None:
    """Hands the heap memory Python and numpy have freed back to the operating system (glibc's
    ``malloc_trim``; nothing elsewhere). LocalDagRunner runs the components one after another in one process:
    without it, a trainer's freed split stays in that process's resident memory under the next component's."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        trim = getattr(libc, "malloc_trim", None)
        if trim is not None:
            trim(0)
    except OSError:
        pass
