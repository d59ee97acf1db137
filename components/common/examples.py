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

    x: float32 [N, D] model inputs; y: int64 [N] labels; features: every feature as a 1-D array (first
    value of each example; bytes decoded to str); example_hashes: hex :func:`example_digest` of each example,
    used to find examples present in two splits; input_features: the ordered names forming x.
    """
    x: np.ndarray
    y: np.ndarray
    features: Dict[str, np.ndarray]
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


def parse_examples(serialized: Sequence[bytes], label_key: str,
                   feature_keys: Optional[Sequence[str]] = None) -> ExamplesData:
    """Parses serialized tf.Examples into arrays (see ExamplesData)."""
    import tensorflow as tf

    if len(serialized) == 0:
        raise ValueError("no examples to parse (empty split)")
    rows: List[Dict[str, object]] = []
    names: set = set()
    hashes: List[str] = []
    for s in serialized:
        ex = tf.train.Example.FromString(s)
        hashes.append(_digest(ex).hex())
        row = {}
        for k, f in ex.features.feature.items():
            vals = _feature_values(f)
            row[k] = vals[0] if len(vals) == 1 else (vals if vals else None)
        rows.append(row)
        names.update(row)
    keys = feature_vector_keys(sorted(names), label_key, feature_keys)
    x = np.zeros((len(rows), len(keys)), dtype=np.float32)
    y = np.zeros(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        lab = row.get(label_key)
        if lab is None or isinstance(lab, list):
            raise ValueError(f"example {i} of the split (in reading order) has {'no' if not lab else 'several'} "
                             f"value(s) for the label {label_key!r}: every example needs exactly one (an empty "
                             "label cell in a CSV row; `privacy-audit run` names the file and row of CSV data)")
        if isinstance(lab, bytes):
            raise ValueError(f"the label {label_key!r} holds strings (example {i}: {lab[:40]!r}); the label must be "
                             "an integer class index 0..K-1: map the strings to integers first (e.g. cat → 0, "
                             "dog → 1)")
        if float(lab) != int(lab) or lab < 0:
            raise ValueError(f"the label {label_key!r} holds {lab!r} (example {i}); the label must be an integer "
                             "class index 0..K-1")
        y[i] = int(lab)
        for j, k in enumerate(keys):
            v = row.get(k)
            if v is None or isinstance(v, list):
                x[i, j] = np.nan
            elif isinstance(v, bytes):
                raise ValueError(f"feature {k!r} is a string feature; the model input takes numeric features "
                                 f"(pass feature_keys to choose them)")
            else:
                x[i, j] = float(v)
    if np.isnan(x).any():
        bad = int(np.isnan(x).any(axis=1).sum())
        raise ValueError(f"{bad} example(s) have a missing value in the model's input features")
    features: Dict[str, np.ndarray] = {}
    for k in sorted(names):
        vals = [row.get(k) for row in rows]
        vals = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in vals]
        features[k] = np.asarray(vals, dtype=object)
    return ExamplesData(x=x, y=y, features=features, example_hashes=hashes, input_features=keys)


def read_serialized(file_pattern: str) -> List[bytes]:
    """All serialized records of the GZIP TFRecord files matching ``file_pattern``, in file-name order."""
    import tensorflow as tf

    files = io.glob(file_pattern)
    if not files:
        raise ValueError(f"no files match {file_pattern}")
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [r.numpy() for r in ds]


def load_examples(file_pattern: str, label_key: str,
                  feature_keys: Optional[Sequence[str]] = None) -> ExamplesData:
    """Reads a split of TFX Examples into arrays; raises ValueError on an empty split or missing keys.

    The examples come back in a canonical order, by :func:`example_digest`: ExampleGen's Beam workers write
    the shards in an order that changes from run to run, and the training batches (indices into these
    arrays) must not, so that the same seed gives the same model."""
    serialized = read_serialized(file_pattern)
    if not serialized:
        raise ValueError(f"the split at {file_pattern} has no examples")
    data = parse_examples(serialized, label_key, feature_keys)
    order = sorted(range(len(serialized)), key=data.example_hashes.__getitem__)
    idx = np.asarray(order, dtype=np.int64)
    return dataclasses.replace(data, x=data.x[idx], y=data.y[idx],
                               features={k: v[idx] for k, v in data.features.items()},
                               example_hashes=[data.example_hashes[i] for i in order])
