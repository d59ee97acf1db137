"""Mergeable Beam CombineFns for membership-inference attacks on data sets of any size.

Two summaries, both built batch by batch with numpy (an input element is a column batch, never a single
example), both mergeable in any order, so Beam may combine them partially on each worker (combiner
lifting) and merge the partial results after the shuffle:

- :class:`ScoreCountsCombineFn`: per-distinct-score counts of members and non-members, the input of
  :func:`metrics.metrics_from_counts`. Exact while a slice has at most ``max_distinct_scores`` distinct
  scores; beyond that it collapses to a fixed, data-independent histogram on the score (see
  :class:`ScoreHistogram` for the approximation), so memory stays bounded whatever the data size.
- :class:`PrioritySampleCombineFn`: a seeded fixed-size sample of each side (members, non-members) for the
  trained attacks: the ``sample_size`` rows with the smallest ``sample_priority(id, seed)``. Unlike
  ``beam.combiners.Sample`` it is reproducible: the same ids and seed give the same sample on any runner,
  any number of workers and any bundle split, and in memory (:func:`sample_priority`).

Imports numpy and apache_beam only (no tfx, no TensorFlow).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import apache_beam as beam
import numpy as np

from privacy_audit.components.membership_inference import metrics as metrics_lib

#: Distinct scores kept exactly per (model, slice, attack) before collapsing to a histogram: 2**20 keys use
#: 24 MiB (int64 key + two int64 counts each).
DEFAULT_MAX_DISTINCT_SCORES = 1 << 20
#: A histogram with one bin per binary exponent of the score (shift 52) has at most ~4095 bins; the cap
#: must allow that coarsest level.
MIN_MAX_DISTINCT_SCORES = 4096
_MANTISSA_BITS = 52
_FLIP = np.int64(0x7FFFFFFFFFFFFFFF)


# ---------------------------------------------------------------------------------------------------------
# Order-preserving integer keys for float scores
# ---------------------------------------------------------------------------------------------------------

def sortable_keys(scores: np.ndarray) -> np.ndarray:
    """int64 keys whose integer order is the float order of ``scores`` ([N] finite float64).

    The IEEE-754 bits of a non-negative float already sort as integers; for a negative float the 63 low
    bits are flipped. -0.0 is first turned into +0.0 so that equal scores get equal keys.
    """
    bits = (np.asarray(scores, dtype=np.float64) + 0.0).view(np.int64)
    return np.where(bits < 0, bits ^ _FLIP, bits)


def keys_to_scores(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`sortable_keys` (float64 of the same shape)."""
    keys = np.asarray(keys, dtype=np.int64)
    return np.where(keys < 0, keys ^ _FLIP, keys).view(np.float64)


def _unique_counts(keys: np.ndarray, members: np.ndarray, nonmembers: np.ndarray
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct keys with summed counts (inputs unsorted, any length)."""
    if keys.size == 0:
        return keys.astype(np.int64), members.astype(np.int64), nonmembers.astype(np.int64)
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    starts = np.concatenate([[0], np.flatnonzero(k[1:] != k[:-1]) + 1])
    return (k[starts], np.add.reduceat(members[order], starts).astype(np.int64),
            np.add.reduceat(nonmembers[order], starts).astype(np.int64))


def _coarsen_sorted(keys: np.ndarray, members: np.ndarray, nonmembers: np.ndarray, bits: int
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drops ``bits`` more low bits of sorted distinct keys and merges the bins that become equal (the
    arithmetic shift is monotone, so the keys stay sorted)."""
    if bits <= 0 or keys.size == 0:
        return keys, members, nonmembers
    k = keys >> bits
    starts = np.concatenate([[0], np.flatnonzero(k[1:] != k[:-1]) + 1])
    return k[starts], np.add.reduceat(members, starts), np.add.reduceat(nonmembers, starts)


def _n_distinct_after(keys: np.ndarray, bits: int) -> int:
    if keys.size == 0:
        return 0
    k = keys >> bits
    return 1 + int(np.count_nonzero(k[1:] != k[:-1]))


# ---------------------------------------------------------------------------------------------------------
# Score counts
# ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ScoreHistogram:
    """Counts of members and non-members per distinct score (or per histogram bin).

    Attributes:
      scores_desc: [K] strictly decreasing float64 scores. When ``shift == 0`` these are the exact distinct
        scores. Otherwise each is the representative (lowest key) of a bin, only its order matters.
      member_counts, nonmember_counts: [K] int64 counts.
      shift: 0 when exact. Otherwise the histogram's bins are the sets of scores whose order-preserving
        64-bit key (:func:`sortable_keys`) agrees except for its ``shift`` low bits: a fixed, data-independent
        grid that is uniform in ``log2 |score|`` with ``52 - shift`` mantissa bits per bin, i.e. every bin spans
        a relative score range of at most ``2 ** (shift - 52)`` (:attr:`relative_bin_width`).

    The approximation: scores in one bin are treated as ties. The ROC then lacks the points inside each bin;
    the AUC changes by at most ``sum_b m_b * n_b / (2 * M * N)`` over bins b (the pairs of a member and a
    non-member that fall in the same bin), TPR/FPR at each remaining threshold are exact, and the
    attacker advantage and TPR at a fixed FPR can only be underestimated, by at most the mass of one bin.
    """

    scores_desc: np.ndarray
    member_counts: np.ndarray
    nonmember_counts: np.ndarray
    shift: int = 0

    @property
    def exact(self) -> bool:
        return self.shift == 0

    @property
    def relative_bin_width(self) -> float:
        return 0.0 if self.shift == 0 else float(2.0 ** (self.shift - _MANTISSA_BITS))

    @property
    def n_members(self) -> int:
        return int(self.member_counts.sum())

    @property
    def n_nonmembers(self) -> int:
        return int(self.nonmember_counts.sum())

    @property
    def auc_error_bound(self) -> float:
        """Upper bound on |AUC - exact AUC| due to binning (0 when exact)."""
        if self.exact or self.n_members == 0 or self.n_nonmembers == 0:
            return 0.0
        mc = self.member_counts.astype(np.float64)
        nc = self.nonmember_counts.astype(np.float64)
        return float(np.sum(mc * nc) / (2.0 * self.n_members * self.n_nonmembers))

    def metrics(self, **kwargs) -> Dict[str, object]:
        """:func:`metrics.metrics_from_counts` on these counts (``kwargs`` are passed through)."""
        return metrics_lib.metrics_from_counts(
            self.scores_desc, self.member_counts.astype(np.float64), self.nonmember_counts.astype(np.float64),
            n_members=self.n_members, n_nonmembers=self.n_nonmembers, **kwargs)

    def approximation(self) -> Optional[Dict[str, float]]:
        """None when exact, else a JSON-able description of the histogram approximation."""
        if self.exact:
            return None
        return {"method": "score_histogram", "n_bins": int(self.scores_desc.size),
                "relative_bin_width": self.relative_bin_width, "auc_error_bound": self.auc_error_bound}


class ScoreCountsAccumulator:
    """Sorted distinct (binned) keys with int64 counts, plus per-batch counts not merged yet."""

    __slots__ = ("keys", "members", "nonmembers", "shift", "pending", "pending_size")

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype=np.int64)
        self.members = np.zeros(0, dtype=np.int64)
        self.nonmembers = np.zeros(0, dtype=np.int64)
        self.shift = 0
        self.pending: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.pending_size = 0

    # Encoded compactly when pickled (sent between workers): sorted keys as variable-width deltas and
    # counts in the fewest bytes, about 7 bytes per distinct score instead of 24; runners hold these
    # partial accumulators in memory before merging them.
    def __getstate__(self):
        keys, members, nonmembers = self.keys, self.members, self.nonmembers
        if self.pending:
            parts = [(keys, members, nonmembers)] + self.pending
            keys, members, nonmembers = _unique_counts(np.concatenate([p[0] for p in parts]),
                                                       np.concatenate([p[1] for p in parts]),
                                                       np.concatenate([p[2] for p in parts]))
        first = int(keys[0]) if keys.size else 0
        deltas = np.diff(keys).view(np.uint64)
        return {"n": int(keys.size), "first": first, "shift": self.shift, "deltas": _pack_uint(deltas),
                "members": _pack_uint(members.view(np.uint64)),
                "nonmembers": _pack_uint(nonmembers.view(np.uint64))}

    def __setstate__(self, state) -> None:
        n = state["n"]
        deltas = _unpack_uint(state["deltas"], max(n - 1, 0)).view(np.int64)
        keys = np.empty(n, dtype=np.int64)
        if n:
            keys[0] = state["first"]
            keys[1:] = deltas
            keys = np.cumsum(keys)  # wraps modulo 2**64 like the differences did
        self.keys = keys
        self.members = _unpack_uint(state["members"], n).view(np.int64)
        self.nonmembers = _unpack_uint(state["nonmembers"], n).view(np.int64)
        self.shift = state["shift"]
        self.pending = []
        self.pending_size = 0


def _pack_uint(values: np.ndarray) -> Tuple[int, bytes]:
    """uint64 values as their low ``width`` little-endian bytes, width the fewest that hold the maximum."""
    if values.size == 0:
        return 0, b""
    width = max(1, (int(values.max()).bit_length() + 7) // 8)
    planes = np.ascontiguousarray(values.astype("<u8")).view(np.uint8).reshape(-1, 8)[:, :width]
    return width, np.ascontiguousarray(planes).tobytes()


def _unpack_uint(packed: Tuple[int, bytes], n: int) -> np.ndarray:
    width, data = packed
    out = np.zeros((n, 8), dtype=np.uint8)
    if n:
        out[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(n, width)
    return out.view("<u8").reshape(n).astype(np.uint64)


class ScoreCountsCombineFn(beam.CombineFn):
    """Combines ``(scores [n] float64, is_member [n] bool)`` batches into a :class:`ScoreHistogram`.

    Args:
      max_distinct_scores: exact up to this many distinct scores; beyond it the accumulator keeps the
        finest fixed histogram (fewest dropped key bits) with at most this many bins. Memory per
        accumulator is about 24 bytes times this number (plus one batch being merged).
    Scores must be finite (the pipeline validates them before).
    """

    def __init__(self, max_distinct_scores: int = DEFAULT_MAX_DISTINCT_SCORES):
        if max_distinct_scores < MIN_MAX_DISTINCT_SCORES:
            raise ValueError(f"max_distinct_scores must be >= {MIN_MAX_DISTINCT_SCORES}, "
                             f"got {max_distinct_scores}")
        self.max_distinct_scores = int(max_distinct_scores)

    def create_accumulator(self) -> ScoreCountsAccumulator:
        return ScoreCountsAccumulator()

    def add_input(self, acc: ScoreCountsAccumulator, element) -> ScoreCountsAccumulator:
        scores, is_member = element
        is_member = np.asarray(is_member, dtype=bool)
        if is_member.size == 0:
            return acc
        keys = sortable_keys(scores)
        if acc.shift:
            keys = keys >> acc.shift
        m = is_member.astype(np.int64)
        acc.pending.append(_unique_counts(keys, m, 1 - m))
        acc.pending_size += acc.pending[-1][0].size
        if acc.pending_size >= max(self.max_distinct_scores, acc.keys.size):
            self._merge_pending(acc)
        return acc

    def _merge_pending(self, acc: ScoreCountsAccumulator) -> None:
        if not acc.pending:
            return
        parts = [(acc.keys, acc.members, acc.nonmembers)] + acc.pending
        acc.pending, acc.pending_size = [], 0
        acc.keys, acc.members, acc.nonmembers = _unique_counts(
            np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))
        self._bound(acc)

    def _bound(self, acc: ScoreCountsAccumulator) -> None:
        """Coarsens to the smallest extra shift that brings the distinct keys within the cap."""
        if acc.keys.size <= self.max_distinct_scores:
            return
        lo, hi = 1, _MANTISSA_BITS - acc.shift
        while lo < hi:  # distinct count is non-increasing in the shift: binary search
            mid = (lo + hi) // 2
            if _n_distinct_after(acc.keys, mid) <= self.max_distinct_scores:
                hi = mid
            else:
                lo = mid + 1
        acc.keys, acc.members, acc.nonmembers = _coarsen_sorted(acc.keys, acc.members, acc.nonmembers, lo)
        acc.shift += lo

    def merge_accumulators(self, accumulators: Iterable[ScoreCountsAccumulator]) -> ScoreCountsAccumulator:
        accs = list(accumulators)
        shift = max(a.shift for a in accs)
        out = ScoreCountsAccumulator()
        out.shift = shift
        for a in accs:
            parts = [(a.keys, a.members, a.nonmembers)] + a.pending
            for k, m, n in parts:
                if k.size == 0:
                    continue
                d = shift - a.shift
                if d:
                    k, m, n = _unique_counts(k >> d, m, n)
                out.pending.append((k, m, n))
                out.pending_size += k.size
        self._merge_pending(out)
        return out

    def compact(self, acc: ScoreCountsAccumulator) -> ScoreCountsAccumulator:
        self._merge_pending(acc)
        return acc

    def extract_output(self, acc: ScoreCountsAccumulator) -> ScoreHistogram:
        self._merge_pending(acc)
        rep = keys_to_scores(acc.keys << acc.shift) if acc.shift else keys_to_scores(acc.keys)
        return ScoreHistogram(scores_desc=rep[::-1].copy(), member_counts=acc.members[::-1].copy(),
                              nonmember_counts=acc.nonmembers[::-1].copy(), shift=acc.shift)


# ---------------------------------------------------------------------------------------------------------
# Seeded sample
# ---------------------------------------------------------------------------------------------------------

def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (a bijection of uint64 with good avalanche), vectorised."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def sample_priority(ids: np.ndarray, seed: int) -> np.ndarray:
    """uint64 sampling priority of each example id ([N] uint64) for ``seed``: the seeded sample of size k
    is the k examples with the smallest priorities. A bijection of the id for a fixed seed, so distinct ids
    never tie."""
    ids = np.asarray(ids, dtype=np.uint64)
    seed_mix = _splitmix64(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    return _splitmix64(ids ^ seed_mix)


def sample_indices(ids: np.ndarray, seed: int, k: int) -> np.ndarray:
    """Indices of the seeded sample of at most ``k`` rows among ``ids`` (what
    :class:`PrioritySampleCombineFn` keeps), returned in increasing order of id (then row position)."""
    ids = np.asarray(ids, dtype=np.uint64)
    pri = sample_priority(ids, seed)
    chosen = np.lexsort((np.arange(ids.size), pri))[:k]
    return chosen[np.lexsort((chosen, ids[chosen]))]


@dataclasses.dataclass
class SideSample:
    """A sample of one side: column arrays of equal length, ordered by ``id``; ``n_seen`` rows were offered."""

    columns: Dict[str, np.ndarray]
    n_seen: int

    @property
    def size(self) -> int:
        return int(self.columns["id"].size) if "id" in self.columns else 0


@dataclasses.dataclass
class SliceSample:
    members: SideSample
    nonmembers: SideSample


def _concat_columns(parts: List[Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    parts = [p for p in parts if p and p["id"].size]
    if not parts:
        return {}
    names = list(parts[0])
    for p in parts[1:]:
        if set(p) != set(names):
            raise ValueError(f"sample batches disagree on their columns: {sorted(names)} vs {sorted(p)}")
    return {name: np.concatenate([p[name] for p in parts]) for name in names}


def _take(columns: Mapping[str, np.ndarray], idx: np.ndarray) -> Dict[str, np.ndarray]:
    return {name: col[idx] for name, col in columns.items()}


class _SideReservoir:
    __slots__ = ("columns", "priority", "pending", "pending_size", "n_seen")

    def __init__(self) -> None:
        self.columns: Dict[str, np.ndarray] = {}
        self.priority = np.zeros(0, dtype=np.uint64)
        self.pending: List[Tuple[Dict[str, np.ndarray], np.ndarray]] = []
        self.pending_size = 0
        self.n_seen = 0

    def __getstate__(self):
        return {"columns": self.columns, "priority": self.priority, "pending": self.pending,
                "n_seen": self.n_seen}

    def __setstate__(self, state) -> None:
        self.columns, self.priority = state["columns"], state["priority"]
        self.pending = list(state["pending"])
        self.pending_size = sum(p[1].size for p in self.pending)
        self.n_seen = state["n_seen"]

    def offer(self, columns: Dict[str, np.ndarray], priority: np.ndarray, k: int, n_seen: int) -> None:
        self.n_seen += n_seen
        if priority.size == 0:
            return
        if priority.size > k:  # only the k best of a batch can ever be kept
            keep = _k_smallest(priority, columns["id"], k)
            columns, priority = _take(columns, keep), priority[keep]
        self.pending.append((columns, priority))
        self.pending_size += priority.size
        if self.pending_size >= max(k, 1024):
            self.reduce(k)

    def reduce(self, k: int) -> None:
        if not self.pending:
            return
        cols = _concat_columns([self.columns] + [p[0] for p in self.pending])
        pri = np.concatenate([self.priority] + [p[1] for p in self.pending])
        self.pending, self.pending_size = [], 0
        if pri.size > k:
            keep = _k_smallest(pri, cols["id"], k)
            cols, pri = _take(cols, keep), pri[keep]
        self.columns, self.priority = cols, pri


def _k_smallest(priority: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest (priority, id) pairs: a total order, so the result does not depend on the
    order in which rows arrived (rows with the same id are the same example, interchangeable)."""
    if priority.size <= k:
        return np.arange(priority.size)
    cand = np.argpartition(priority, k - 1)
    # Rows tied with the k-th priority at the cut are resolved by id.
    kth = priority[cand[k - 1]]
    sure = np.flatnonzero(priority < kth)
    tied = np.flatnonzero(priority == kth)
    tied = tied[np.argsort(ids[tied], kind="stable")][: k - sure.size]
    return np.concatenate([sure, tied])


class PrioritySampleCombineFn(beam.CombineFn):
    """Seeded sample of at most ``sample_size`` members and ``sample_size`` non-members.

    Input elements: column batches ``{"id": [n] uint64, "is_member": [n] bool, <other columns>: [n, ...]}``.
    Output: :class:`SliceSample` whose sides keep the rows with the smallest :func:`sample_priority` of
    their id (the columns other than ``is_member``), ordered by id, plus the number of rows offered.
    Mergeable (a union of k-smallest sets), so the sample is the same for any bundling or runner.
    """

    def __init__(self, sample_size: int, seed: int):
        if sample_size < 1:
            raise ValueError(f"sample_size must be >= 1, got {sample_size}")
        self.sample_size = int(sample_size)
        self.seed = int(seed)

    def create_accumulator(self):
        return (_SideReservoir(), _SideReservoir())

    def add_input(self, acc, element):
        is_member = np.asarray(element["is_member"], dtype=bool)
        cols = {k: np.asarray(v) for k, v in element.items() if k != "is_member"}
        ids = np.asarray(cols["id"], dtype=np.uint64)
        cols["id"] = ids
        pri = sample_priority(ids, self.seed)
        for side, mask in ((acc[0], is_member), (acc[1], ~is_member)):
            idx = np.flatnonzero(mask)
            side.offer(_take(cols, idx), pri[idx], self.sample_size, int(idx.size))
        return acc

    def merge_accumulators(self, accumulators):
        accs = list(accumulators)
        out = self.create_accumulator()
        for i in (0, 1):
            side = out[i]
            for a in accs:
                src = a[i]
                side.n_seen += src.n_seen
                if src.priority.size:
                    side.pending.append((src.columns, src.priority))
                side.pending.extend(src.pending)
            side.pending_size = sum(p[1].size for p in side.pending)
            side.reduce(self.sample_size)
        return out

    def compact(self, acc):
        for side in acc:
            side.reduce(self.sample_size)
        return acc

    def extract_output(self, acc) -> SliceSample:
        sides = []
        for side in acc:
            side.reduce(self.sample_size)
            cols = side.columns
            if cols:
                order = np.lexsort((side.priority, cols["id"]))
                cols = _take(cols, order)
            sides.append(SideSample(columns=cols, n_seen=side.n_seen))
        return SliceSample(members=sides[0], nonmembers=sides[1])
