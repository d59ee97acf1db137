"""Reading TFX Examples (GZIP TFRecords of tf.Example) into arrays, and the embedded digits data.

The model input convention: a float vector of every feature except the label, ordered by feature name,
unless ``feature_keys`` gives the order. The digits data names its pixels ``pixel_00``..``pixel_63`` so
that name order is pixel order.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io as _pyio
from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence

import numpy as np

from privacy_audit.components.common import io

DIGITS_LABEL_KEY = "label"
DIGITS_FEATURES = [f"pixel_{i:02d}" for i in range(64)]


def write_digits_csv(out_dir: str, n: Optional[int] = None, seed: int = 0) -> str:
    """Writes scikit-learn's digits (1797 8x8 images, 10 classes) as ``out_dir/digits.csv``.

    Args:
      out_dir: directory to create (it must hold only this CSV for CsvExampleGen).
      n: keep a seeded random subset of this many rows (all when None).
      seed: seed of the subset and of the row order.
    Pixels are scaled from 0..16 to 0..1; the label column is ``label``.
    Returns the CSV path. Written to a temporary name and moved into place.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data.astype(np.float64) / 16.0
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    if n is not None:
        if n <= 0 or n > len(y):
            raise ValueError(f"n must be in 1..{len(y)}, got {n}")
        order = order[:n]
    path = io.join(out_dir, "digits.csv")
    buf = _pyio.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(DIGITS_FEATURES + [DIGITS_LABEL_KEY])
    for i in order:
        w.writerow([f"{v:.4f}" for v in x[i]] + [int(y[i])])
    io.write_text(path, buf.getvalue())
    return path


def feature_vector_keys(feature_names: Sequence[str], label_key: str,
                        feature_keys: Optional[Sequence[str]] = None) -> List[str]:
    """The ordered feature names that form the model input vector.

    Raises ValueError naming any requested key that the examples do not have, or the label key if absent.
    """
    names = set(feature_names)
    if label_key not in names:
        raise ValueError(f"label key {label_key!r} is not a feature of the examples "
                         f"(features: {sorted(names)[:20]}{'...' if len(names) > 20 else ''})")
    if feature_keys:
        missing = [k for k in feature_keys if k not in names]
        if missing:
            raise ValueError(f"feature key(s) {missing} not found in the examples "
                             f"(features: {sorted(names)[:20]}{'...' if len(names) > 20 else ''})")
        return list(feature_keys)
    keys = sorted(k for k in names if k != label_key)
    if not keys:
        raise ValueError("the examples have no feature besides the label key")
    return keys


@dataclasses.dataclass
class ExamplesData:
    """Examples of one split as arrays.

    x: float32 [N, D] model inputs; y: int64 [N] labels; features: every feature by name as a 1-D object array
    (the value of each example, bytes decoded to str; a list when several, None when none), each built only
    when asked for (a read-only mapping); example_hashes: hex :func:`example_digest` of each example,
    used to find examples present in two splits; input_features: the ordered names forming x.
    """
    x: np.ndarray
    y: np.ndarray
    features: Mapping[str, np.ndarray]
    example_hashes: List[str]
    input_features: List[str]


def _feature_values(feature) -> list:
    kind = feature.WhichOneof("kind")
    if kind is None:
        return []
    return list(getattr(feature, kind).value)


def split_file_pattern(examples_uri: str, split: str) -> str:
    """The file pattern of one split of a TFX Examples artifact (``Split-<name>/*``)."""
    d = io.join(examples_uri, f"Split-{split}")
    if not io.isdir(d):
        have = sorted(p[len("Split-"):] for p in io.listdir(examples_uri) if p.startswith("Split-")) \
            if io.isdir(examples_uri) else []
        raise ValueError(f"split {split!r} not found in examples at {examples_uri} (splits: {have})")
    return io.join(d, "*")


def example_digest(record: bytes) -> bytes:
    """The sha1 of a serialized tf.Example's deterministic serialization (features in key order): the
    example's id. Not the sha1 of the stored bytes, which can differ from run to run for the same example
    (protobuf writes map fields in no fixed order)."""
    import tensorflow as tf

    return _digest(tf.train.Example.FromString(record))


def _digest(example) -> bytes:
    return hashlib.sha1(example.SerializeToString(deterministic=True)).digest()


def ids_from_hashes(hex_digests: Sequence[str]) -> np.ndarray:
    """uint64 example ids from hex digests (``ExamplesData.example_hashes``): the first 64 bits (the ``id`` of
    the evaluator's per-example records)."""
    return np.fromiter((int(h[:16], 16) for h in hex_digests), dtype=np.uint64, count=len(hex_digests))


# ---------------------------------------------------------------------------------------------------------
# Columnar decoding: the feature kinds are inferred once, then chunks of records go through
# tf.io.parse_example (C++) as ragged columns; the ids (sha1 of protobuf's deterministic serialization) are
# rebuilt from those columns in bulk and checked against each record (_rebuilt_ids). No Python object per
# example or per value, except the hex id the result carries.
# ---------------------------------------------------------------------------------------------------------

DECODE_CHUNK = 16384
_PROBE = 16  # records read by protobuf to learn the feature kinds (later ones grow the spec)
_CHUNK_BYTES = 16 << 20
_KIND_WORDS = {"float_list": "floats (float_list)", "int64_list": "integers (int64_list)",
               "bytes_list": "strings (bytes_list)"}


@dataclasses.dataclass
class _Column:
    """One feature of a split in reading order: ``values`` flat (float32, int64, or object of bytes) and
    ``lengths`` (number of values of each example, 0 = missing), None when every example has one value."""
    kind: str
    values: np.ndarray
    lengths: Optional[np.ndarray]

    def first_values(self) -> np.ndarray:
        """The first value of each example, None where it has none (``example_columns``)."""
        if self.lengths is None:
            return self._scalars(self.values)
        out = np.full(len(self.lengths), None, dtype=object)
        has = self.lengths > 0
        starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        out[has] = self._scalars(self.values[starts[has]])
        return out

    def objects(self) -> np.ndarray:
        """Each example's value as the per-record reader gave it: the value when there is one (bytes decoded
        to str), a list when several, None when none."""
        if self.lengths is None:
            return self._scalars(self.values)
        vals: list = []
        pos = 0
        for n in self.lengths.tolist():
            if n == 0:
                vals.append(None)
            elif n == 1:
                v = self.values[pos].item() if self.kind != "bytes_list" else self.values[pos]
                vals.append(v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
            else:
                vals.append(self.values[pos:pos + n].tolist())
            pos += n
        return np.asarray(vals, dtype=object)

    def _scalars(self, values: np.ndarray) -> np.ndarray:
        if self.kind == "bytes_list":
            out = np.empty(len(values), dtype=object)
            out[:] = [v.decode("utf-8", "replace") for v in values.tolist()]
            return out
        return values.astype(object)


@dataclasses.dataclass
class _Decoded:
    hashes: List[str]
    names: set
    columns: Dict[str, _Column]


def _varint_len(v: np.ndarray) -> np.ndarray:
    u = np.asarray(v).astype(np.int64).view(np.uint64) if np.asarray(v).dtype.kind == "i" else np.asarray(v)
    n = np.ones(u.shape, np.int64)
    for k in range(1, 10):
        n += u >= np.uint64(1 << (7 * k))
    return n


def _row_sums(q: np.ndarray, splits: np.ndarray) -> np.ndarray:
    cs = np.concatenate([[0], np.cumsum(q, dtype=np.int64)])
    return cs[splits[1:]] - cs[splits[:-1]]


def _kind_of(feature) -> Optional[str]:
    kind = feature.WhichOneof("kind")
    return kind if kind and len(getattr(feature, kind).value) else None


def _wrong_kind(chunk: Sequence[bytes], start: int, spec: Dict[str, str], err) -> ValueError:
    """The ValueError naming the first example (row of the split) whose feature changes kind."""
    import tensorflow as tf

    for i, s in enumerate(chunk):
        fmap = tf.train.Example.FromString(s).features.feature
        for k, kind in spec.items():
            f = fmap.get(k)
            got = f.WhichOneof("kind") if f is not None else None
            if got is not None and got != kind:
                return ValueError(
                    f"feature {k!r} at row {start + i} of the split (in reading order) holds "
                    f"{_KIND_WORDS[got]} where the rows before it hold {_KIND_WORDS[kind]}: every example must "
                    f"give a feature one type (e.g. a CSV column that turns to text at row {start + i}: fix or "
                    "drop that row)")
    return ValueError(f"the examples do not parse: {str(err).splitlines()[0]}")


def _varint_segment(v: np.ndarray):
    """Each value's protobuf varint: a (m, 10) uint8 matrix and the byte count of each row."""
    u = np.asarray(v).astype(np.int64).view(np.uint64)
    w = _varint_len(u)
    mat = np.zeros((len(u), int(w.max()) if len(u) else 0), np.uint8)
    for i in range(mat.shape[1]):
        byte = ((u >> np.uint64(7 * i)) & np.uint64(0x7F)).astype(np.uint8)
        mat[:, i] = np.where(i < w - 1, byte | 0x80, byte)
    return mat, w


def _const_segment(b: bytes, m: int):
    return np.tile(np.frombuffer(b, np.uint8), (m, 1)), np.full(m, len(b), np.int64)


def _join_segments(segments):
    """Row-wise concatenation of variable-width segments (matrix, widths): a (m, max width) matrix and the
    widths."""
    w = np.sum([s[1] for s in segments], axis=0).astype(np.int64)
    if all(len(s[1]) == 0 or (s[1].min() == s[1].max() == s[0].shape[1]) for s in segments):
        return np.concatenate([s[0] for s in segments], axis=1), w  # fixed widths: side by side
    mat = np.concatenate([s[0] for s in segments], axis=1)
    mask = np.concatenate([np.arange(s[0].shape[1]) < s[1][:, None] for s in segments], axis=1)
    out = np.zeros((len(w), int(w.max()) if len(w) else 0), np.uint8)
    out[np.arange(out.shape[1]) < w[:, None]] = mat[mask]
    return out, w


def _entry_segment(key: bytes, kind: str, values: np.ndarray):
    """The map entries ``key → Feature(one value)`` as protobuf's deterministic serialization writes them."""
    m = len(values)
    if kind == "float_list":
        lst = _join_segments([_const_segment(b"\x0a\x04", m),
                              (np.ascontiguousarray(values.astype("<f4")).view(np.uint8).reshape(m, 4),
                               np.full(m, 4, np.int64))])
        tag = b"\x12"
    elif kind == "int64_list":
        v = _varint_segment(values)
        lst = _join_segments([_const_segment(b"\x0a", m), _varint_segment(v[1]), v])
        tag = b"\x1a"
    else:
        blen = np.fromiter(map(len, values.tolist()), np.int64, m)
        if m and blen.max() > 4096:
            return None
        payload = np.zeros((m, int(blen.max()) if m else 0), np.uint8)
        payload[np.arange(payload.shape[1]) < blen[:, None]] = np.frombuffer(b"".join(values.tolist()), np.uint8)
        lst = _join_segments([_const_segment(b"\x0a", m), _varint_segment(blen), (payload, blen)])
        tag = b"\x0a"
    feature = _join_segments([_const_segment(tag, m), _varint_segment(lst[1]), lst])
    klen = np.full(m, len(key), np.int64)
    entry = _join_segments([_const_segment(b"\x0a", m), _varint_segment(klen), _const_segment(key, m),
                            _const_segment(b"\x12", m), _varint_segment(feature[1]), feature])
    return _join_segments([_const_segment(b"\x0a", m), _varint_segment(entry[1]), entry])


def _key_hash(mat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A hash of each row's first ``lengths`` bytes (to find which feature an entry is; the entry's bytes are
    compared in full afterwards)."""
    h = lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for i in range(mat.shape[1]):
        h = np.where(i < lengths, (h ^ mat[:, i].astype(np.uint64)) * np.uint64(0x100000001B3), h)
    return h


def _rebuilt_ids(chunk: Sequence[bytes], spec: Dict[str, str], parsed: Dict[str, tuple]):
    """The ids of the records that are, up to the order of their features, protobuf's deterministic
    serialization of the decoded columns: that serialization is rebuilt from the columns in bulk and each
    record is checked to consist of exactly its entries (header, then every entry byte for byte, each feature
    once). Returns (hex ids or None, ok mask); the other records go through protobuf."""
    n = len(chunk)
    ids: List[Optional[str]] = [None] * n
    ok = np.zeros(n, bool)
    keys = sorted(spec, key=lambda k: k.encode("utf-8"))
    kbytes = [k.encode("utf-8") for k in keys]
    if not keys or any(len(b) == 0 or len(b) > 127 for b in kbytes):
        return ids, ok
    blocks, present = [], np.zeros((n, len(keys)), bool)
    for j, k in enumerate(keys):
        values, splits = parsed[k]
        counts = np.diff(splits)
        if (counts > 1).any():
            return ids, ok
        has = counts == 1
        seg = _entry_segment(kbytes[j], spec[k], values)
        if seg is None:
            return ids, ok
        full = np.zeros((n, seg[0].shape[1]), np.uint8)
        full[has] = seg[0]
        widths = np.zeros(n, np.int64)
        widths[has] = seg[1]
        blocks.append((full, widths))
        present[:, j] = has
    entry_w = np.stack([b[1] for b in blocks], axis=1)
    body = entry_w.sum(axis=1)
    header = _join_segments([_const_segment(b"\x0a", n), _varint_segment(body)])
    rebuilt, rw = _join_segments([header] + blocks)
    raw_len = np.fromiter(map(len, chunk), np.int64, n)
    good = (raw_len == rw) & (body > 0)
    # Each record, scanned as map entries after the header: every entry must be one of the rebuilt ones.
    raw = np.frombuffer(b"".join(chunk), np.uint8)
    raw_off = np.concatenate([[0], np.cumsum(raw_len)[:-1]])
    hw = header[1]
    rows = np.arange(n)
    hdr_idx = np.arange(header[0].shape[1])
    hdr_ok = np.all((hdr_idx >= hw[:, None]) | (raw[np.minimum(raw_off[:, None] + hdr_idx, len(raw) - 1)]
                                                  == rebuilt[:, :header[0].shape[1]]), axis=1)
    good &= hdr_ok
    entry_off = hw[:, None] + np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(entry_w, axis=1)[:, :-1]], 1)
    spec_hash = _key_hash(np.array([list(b.ljust(128, b"\0")) for b in kbytes], np.uint8),
                          np.array([len(b) for b in kbytes], np.int64))
    if len(set(spec_hash.tolist())) != len(keys):
        return ids, ok
    hash_order = np.argsort(spec_hash)
    sorted_hash = spec_hash[hash_order]
    pos = raw_off + hw
    end = raw_off + raw_len
    seen = np.zeros((n, len(keys)), np.int64)
    kmax = max(len(b) for b in kbytes)
    safe = len(raw) - 1
    for _ in range(int(present.sum(axis=1).max())):
        act = good & (pos < end)
        if not act.any():
            break
        p = pos[act]
        at = lambda off: raw[np.minimum(p + off, safe)].astype(np.int64)  # noqa: E731
        # outer tag, entry length (varint of up to 3 bytes), key tag, key length (< 128)
        b1, b2, b3 = at(1), at(2), at(3)
        nlen = np.where(b1 < 0x80, 1, np.where(b2 < 0x80, 2, 3))
        elen = np.where(nlen == 1, b1, np.where(nlen == 2, (b1 & 0x7F) | (b2 << 7),
                                                (b1 & 0x7F) | ((b2 & 0x7F) << 7) | (b3 << 14)))
        total = 1 + nlen + elen
        kstart = p + 1 + nlen
        klen = raw[np.minimum(kstart + 1, safe)].astype(np.int64)
        fine = (at(0) == 0x0A) & (b3 < 0x80) & (raw[np.minimum(kstart, safe)] == 0x0A) & (klen < 0x80) \
            & (p + total <= end[act])
        kmat = raw[np.minimum(kstart[:, None] + 2 + np.arange(kmax), safe)]
        h = _key_hash(kmat, np.minimum(klen, kmax)) if kmax else np.zeros(len(p), np.uint64)
        slot = np.minimum(np.searchsorted(sorted_hash, h), len(keys) - 1)
        j = hash_order[slot]
        r = rows[act]
        fine &= (sorted_hash[slot] == h) & (klen == np.array([len(b) for b in kbytes])[j]) & present[r, j] \
            & (entry_w[r, j] == total)
        bad_rows = r[~fine]
        good[bad_rows] = False
        r, j, p, total = r[fine], j[fine], p[fine], total[fine]
        seen[r, j] += 1
        flat_rebuilt = rebuilt.reshape(-1)
        for width in np.unique(total).tolist():  # the entry, byte for byte (grouped by width)
            g = total == width
            cols = np.arange(width)
            same = raw[p[g][:, None] + cols] == flat_rebuilt[(r[g] * rebuilt.shape[1] + entry_off[r[g], j[g]])[:, None]
                                                             + cols]
            good[r[g][~same.all(axis=1)]] = False
        pos[act] = np.where(fine, pos[act] + (1 + nlen + elen), pos[act])
    good &= (pos == end) & np.all(seen == present, axis=1)
    flat = memoryview(rebuilt.tobytes() if n and rw.min() == rw.max() == rebuilt.shape[1]
                      else rebuilt[np.arange(rebuilt.shape[1]) < rw[:, None]].tobytes())
    offs = np.concatenate([[0], np.cumsum(rw)]).tolist()
    sha1 = hashlib.sha1
    for i in np.nonzero(good)[0].tolist():
        ids[i] = sha1(flat[offs[i]:offs[i + 1]]).hexdigest()
    return ids, good


def _decode(serialized: Sequence[bytes], keep: Optional[Sequence[str]] = None,
            chunk_size: int = DECODE_CHUNK) -> _Decoded:
    """Columns of serialized tf.Examples, in reading order, and their ids (:func:`example_digest`, hex).

    Every feature is decoded (its kind inferred once, from the first examples that hold it); ``keep``: the
    features whose columns are returned (None: all). ``names`` is exactly the set of feature names of the
    examples: a record that is not, up to order, the entries of the features known so far (see
    :func:`_rebuilt_ids`) is read by protobuf, which finds any other feature. ValueError naming the feature and
    row when an example gives a feature another kind than earlier ones.
    """
    import tensorflow as tf

    from_string = tf.train.Example.FromString
    n = len(serialized)
    keep = None if keep is None else set(keep)
    spec: Dict[str, str] = {}
    names: set = set()
    for s in serialized[:_PROBE]:
        for k, f in from_string(s).features.feature.items():
            names.add(k)
            kind = _kind_of(f)
            if kind and k not in spec:
                spec[k] = kind
    hashes: List[str] = []
    parts: Dict[str, List[tuple]] = {}
    _dtypes = {"float_list": tf.float32, "int64_list": tf.int64, "bytes_list": tf.string}
    # The bulk ids hold a few copies of a chunk's bytes: chunks of about _CHUNK_BYTES, whatever the width.
    probe_bytes = sum(len(s) for s in serialized[:_PROBE]) / max(1, min(n, _PROBE))
    chunk_size = int(max(256, min(chunk_size, _CHUNK_BYTES // max(probe_bytes, 1))))
    for start in range(0, n, chunk_size):
        chunk = list(serialized[start:start + chunk_size])
        while True:
            parsed: Dict[str, tuple] = {}
            if spec:
                try:
                    out = tf.io.parse_example(tf.constant(chunk),
                                              {k: tf.io.RaggedFeature(_dtypes[v]) for k, v in spec.items()})
                except tf.errors.InvalidArgumentError as e:
                    raise _wrong_kind(chunk, start, spec, e) from None
                parsed = {k: (v.values.numpy(), v.row_splits.numpy()) for k, v in out.items()}
                del out
            ids, good = _rebuilt_ids(chunk, spec, parsed)
            grown = False
            # The other records (another feature, an empty one, vectors, unusual encodings): protobuf.
            for i in np.nonzero(~good)[0].tolist():
                ex = from_string(chunk[i])
                for k, f in ex.features.feature.items():
                    names.add(k)
                    kind = _kind_of(f)
                    if kind and k not in spec:
                        spec[k], grown = kind, True
                ids[i] = hashlib.sha1(ex.SerializeToString(deterministic=True)).hexdigest()
            if not grown:
                break
        hashes.extend(ids)
        for k, (values, splits) in parsed.items():
            if keep is not None and k not in keep:
                continue
            counts = np.diff(splits)
            lengths = None if bool((counts == 1).all()) else counts.astype(np.int32)
            parts.setdefault(k, []).append((start, len(chunk), values, lengths))
    columns = {}
    for k in list(parts):
        chunks = parts.pop(k)
        covered = sum(c[1] for c in chunks)
        if covered == n and all(c[3] is None for c in chunks):
            values = chunks[0][2] if len(chunks) == 1 else np.concatenate([c[2] for c in chunks])
            lengths = None
        else:
            lengths = np.zeros(n, np.int32)
            for c_start, c_len, _, c_lengths in chunks:
                lengths[c_start:c_start + c_len] = 1 if c_lengths is None else c_lengths
            values = np.concatenate([c[2] for c in chunks])
        columns[k] = _Column(kind=spec[k], values=values, lengths=lengths)
        del chunks
    names.update(columns)
    return _Decoded(hashes=hashes, names=names, columns=columns)


class _FeatureColumns(Mapping):
    """``ExamplesData.features``: every feature of the examples by name, each materialised (as a 1-D object
    array, the per-record reader's values) only when asked for, from the model input x, the labels y, or the
    compact column of a feature outside the model input."""

    def __init__(self, names: Sequence[str], columns: Dict[str, _Column], x: np.ndarray,
                 input_features: Sequence[str], y: np.ndarray, label_key: str, label_kind: str, n: int,
                 int_inputs: set, order: Optional[np.ndarray] = None):
        self._names = sorted(names)
        self._columns = columns
        self._x, self._inputs = x, {k: j for j, k in enumerate(input_features)}
        self._y, self._label_key, self._label_kind = y, label_key, label_kind
        self._n = n
        self._int_inputs = int_inputs
        self._order = order

    def reordered(self, order: np.ndarray, x: np.ndarray, y: np.ndarray) -> "_FeatureColumns":
        """The same features with the examples in ``order``; ``x``, ``y``: the model inputs and labels already
        in that order."""
        return _FeatureColumns(self._names, self._columns, x, list(self._inputs), y, self._label_key,
                               self._label_kind, self._n, self._int_inputs,
                               order if self._order is None else self._order[order])

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._columns and key not in self._inputs and key != self._label_key:
            if key in self._names:  # present in the examples, never with a value
                return np.full(self._n, None, dtype=object)
            raise KeyError(key)
        if key in self._columns:
            col = self._columns[key].objects()
            return col if self._order is None else col[self._order]
        if key == self._label_key:
            return (self._y if self._label_kind == "int64_list" else self._y.astype(np.float64)).astype(object)
        # float32 holds a float feature exactly, and an integer one up to 2**24 (larger ones keep a column).
        col = self._x[:, self._inputs[key]]
        return col.astype(np.int64).astype(object) if key in self._int_inputs else col.astype(object)

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def parse_examples(serialized: Sequence[bytes], label_key: str,
                   feature_keys: Optional[Sequence[str]] = None) -> ExamplesData:
    """Parses serialized tf.Examples into arrays (see ExamplesData), columnar: only the model inputs (x) and
    the label (y) become arrays; another feature is built when ``features[name]`` asks for it."""
    if len(serialized) == 0:
        raise ValueError("no examples to parse (empty split)")
    dec = _decode(serialized)
    n = len(serialized)
    keys = feature_vector_keys(sorted(dec.names), label_key, feature_keys)
    columns = dec.columns
    lab = columns.get(label_key)
    # The first row that a per-example reader would stop at: a label problem, else a string model input.
    label_bad = np.ones(n, bool) if lab is None else _label_problems(lab)
    first_label = int(np.argmax(label_bad)) if label_bad.any() else n
    first_string, string_key = n, None
    for k in keys:
        col = columns.get(k)
        if col is not None and col.kind == "bytes_list":
            single = np.ones(n, bool) if col.lengths is None else col.lengths == 1
            if single.any() and int(np.argmax(single)) < first_string:
                first_string, string_key = int(np.argmax(single)), k
    if first_label < n and first_label <= first_string:
        raise _label_error(lab, label_key, first_label)
    if string_key is not None:
        raise _string_feature_error(columns[string_key], string_key)
    y = (lab.values if lab.kind == "int64_list" else lab.values.astype(np.int64)).astype(np.int64, copy=False)
    x = np.empty((n, len(keys)), dtype=np.float32)
    int_inputs = set()
    for j, k in enumerate(keys):
        col = columns.get(k)
        if col is None:
            x[:, j] = np.nan
            continue
        vals = col.values.astype(np.float64).astype(np.float32) if col.kind == "int64_list" else col.values
        if col.lengths is None:
            x[:, j] = vals
        else:
            x[:, j] = np.nan
            one = col.lengths == 1
            starts = np.concatenate([[0], np.cumsum(col.lengths, dtype=np.int64)[:-1]])
            x[one, j] = vals[starts[one]]
        if col.kind == "int64_list" and col.lengths is None and k != label_key:
            # x holds an integer exactly up to 2**24; keep the column only when it may not.
            if bool(((col.values > (1 << 24)) | (col.values < -(1 << 24))).any()):
                continue
            int_inputs.add(k)
        if k != label_key:
            del columns[k]
    if np.isnan(x).any():
        bad = int(np.isnan(x).any(axis=1).sum())
        raise ValueError(f"{bad} example(s) have a missing value in the model's input features")
    label_kind = lab.kind
    if label_key not in keys:
        del columns[label_key]
    features = _FeatureColumns(dec.names, columns, x, keys, y, label_key, label_kind, n, int_inputs)
    return ExamplesData(x=x, y=y, features=features, example_hashes=dec.hashes, input_features=keys)


def _label_problems(lab: _Column) -> np.ndarray:
    """True for each example whose label is not one non-negative integer."""
    if lab.lengths is None:
        single, v = np.ones(len(lab.values), bool), lab.values
    else:
        single = lab.lengths == 1
        starts = np.concatenate([[0], np.cumsum(lab.lengths, dtype=np.int64)[:-1]])
        v = lab.values[np.minimum(starts, max(len(lab.values) - 1, 0))] if len(lab.values) else \
            np.zeros(len(single), lab.values.dtype if lab.kind != "bytes_list" else np.float32)
    if lab.kind == "bytes_list":
        return np.ones(len(single), bool)
    if lab.kind == "float_list":
        with np.errstate(invalid="ignore"):
            return ~single | ~np.isfinite(v) | (v != np.floor(v)) | (v < 0)
    return ~single | (v < 0)


def _label_error(lab: Optional[_Column], label_key: str, i: int) -> ValueError:
    value = None if lab is None else lab.objects()[i]
    if value is None or isinstance(value, list):
        return ValueError(f"example {i} of the split (in reading order) has {'no' if not value else 'several'} "
                          f"value(s) for the label {label_key!r}: every example needs exactly one (an empty "
                          "label cell in a CSV row; `privacy-audit run` names the file and row of CSV data)")
    if lab.kind == "bytes_list":
        raw = lab.values[i if lab.lengths is None else int(np.cumsum(lab.lengths, dtype=np.int64)[i]) - 1]
        return ValueError(f"the label {label_key!r} holds strings (example {i}: {raw[:40]!r}); the label must be "
                          "an integer class index 0..K-1: map the strings to integers first (e.g. cat → 0, "
                          "dog → 1)")
    return ValueError(f"the label {label_key!r} holds {value!r} (example {i}); the label must be an integer "
                      "class index 0..K-1")


def _string_feature_error(col: _Column, key: str) -> ValueError:
    """Names the first row whose value is not a number: CsvExampleGen types a column as strings (in every
    example) when any of its cells is not a number, so that row is the one to fix."""
    row, value = None, None
    lengths = np.ones(len(col.values), np.int32) if col.lengths is None else col.lengths
    pos = 0
    for i, m in enumerate(lengths.tolist()):
        if m == 1:
            v = col.values[pos]
            try:
                float(v)
            except ValueError:
                row, value = i, v
                break
            if row is None and value is None:
                value = (i, v)
        pos += m
    if row is None:
        row, value = value
    return ValueError(f"feature {key!r} is a string feature; the model input takes numeric features "
                      f"(pass feature_keys to choose them): row {row} of the split (in reading order) holds "
                      f"{value[:40]!r}")


def read_serialized(file_pattern: str) -> List[bytes]:
    """All serialized records of the GZIP TFRecord files matching ``file_pattern``, in file-name order."""
    import tensorflow as tf

    files = io.glob(file_pattern)
    if not files:
        raise ValueError(f"no files match {file_pattern}")
    out: List[bytes] = []
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(DECODE_CHUNK):
        out.extend(batch.numpy().tolist())
    return out


def count_records(file_pattern: str) -> int:
    """The number of records in the GZIP TFRecord files matching ``file_pattern`` (read, not parsed)."""
    import tensorflow as tf

    files = io.glob(file_pattern)
    if not files:
        return 0
    batches = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(DECODE_CHUNK)
    return int(batches.reduce(tf.constant(0, tf.int64), lambda n, b: n + tf.shape(b, out_type=tf.int64)[0]))


def per_split(counts: Dict[str, int]) -> str:
    """``"train: 5,001,105, eval: 4,998,895"``."""
    return ", ".join(f"{s}: {n:,}" for s, n in counts.items())


def check_example_count(examples_uri: str, split_names: Sequence[str], expected: int,
                        known: Optional[Dict[str, int]] = None) -> Dict[str, int]:
    """Refuses Examples whose splits hold, together, another number of examples than the ``expected`` rows of the
    source data: rows lost (or duplicated) between the data and ExampleGen's output would otherwise be audited
    silently. ``known`` gives splits already counted (the one a trainer loaded); the others are counted here.
    Returns the count per split; ValueError naming both counts and what to do."""
    known = known or {}
    counts = {s: int(known[s]) if s in known else count_records(split_file_pattern(examples_uri, s))
              for s in split_names}
    total = sum(counts.values())
    if total != expected:
        what = f"{expected - total:,} rows were lost" if total < expected else f"{total - expected:,} rows too many"
        raise ValueError(
            f"the Examples at {examples_uri} hold {total:,} examples ({per_split(counts)}) but the source data has "
            f"{expected:,} rows: {what} between the data and ExampleGen's output, and the audit would not be of "
            "the data given. Beam's multi-process DirectRunner (direct_num_workers > 1) has dropped rows of a "
            "10M-row CSV without an error: rerun in-process (the default, --direct-num-workers 1) or on a "
            "distributed runner, without the cached ExampleGen result (--no-cache)")
    return counts


def load_examples(file_pattern: str, label_key: str,
                  feature_keys: Optional[Sequence[str]] = None) -> ExamplesData:
    """Reads a split of TFX Examples into arrays; raises ValueError on an empty split or missing keys, and
    MemoryError, before reading it, for a split that would not fit in memory (:mod:`memory`).

    The examples come back in a canonical order, by :func:`example_digest`: ExampleGen's Beam workers write
    the shards in an order that changes from run to run, and the training batches (indices into these
    arrays) must not, so that the same seed gives the same model."""
    from privacy_audit.components.common.memory import check_split_fits

    check_split_fits(io.glob(file_pattern), f"the split at {file_pattern}")
    serialized = read_serialized(file_pattern)
    if not serialized:
        raise ValueError(f"the split at {file_pattern} has no examples")
    data = parse_examples(serialized, label_key, feature_keys)
    del serialized
    order = sorted(range(len(data.example_hashes)), key=data.example_hashes.__getitem__)
    idx = np.asarray(order, dtype=np.int64)
    x, y = data.x[idx], data.y[idx]
    return dataclasses.replace(data, x=x, y=y, features=data.features.reordered(idx, x, y),
                               example_hashes=[data.example_hashes[i] for i in order])
