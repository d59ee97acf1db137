"""Columnar decoding of TFX Examples (examples.parse_examples / load_examples / serving_model.example_columns)
against the per-record reader it replaced, kept here as the reference: same arrays bit for bit, same order,
same ids; a feature that changes kind is named with its row; memory stays near the numeric arrays."""

import hashlib
import os
import sys
import tracemalloc
from typing import Dict, List

import numpy as np
import pytest

from privacy_audit.components.common import examples
from privacy_audit.components.membership_inference import serving_model as sm


# ---- the per-record reader before columnar decoding (the reference) ------------------------------------

def _reference_parse_examples(serialized, label_key, feature_keys=None):
    import tensorflow as tf

    rows: List[Dict[str, object]] = []
    names: set = set()
    hashes: List[str] = []
    for s in serialized:
        ex = tf.train.Example.FromString(s)
        hashes.append(hashlib.sha1(ex.SerializeToString(deterministic=True)).digest().hex())
        row = {}
        for k, f in ex.features.feature.items():
            kind = f.WhichOneof("kind")
            vals = [] if kind is None else list(getattr(f, kind).value)
            row[k] = vals[0] if len(vals) == 1 else (vals if vals else None)
        rows.append(row)
        names.update(row)
    keys = examples.feature_vector_keys(sorted(names), label_key, feature_keys)
    x = np.zeros((len(rows), len(keys)), dtype=np.float32)
    y = np.zeros(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        lab = row.get(label_key)
        if lab is None or isinstance(lab, list) or isinstance(lab, bytes) or float(lab) != int(lab) or lab < 0:
            raise ValueError(f"bad label at example {i}")
        y[i] = int(lab)
        for j, k in enumerate(keys):
            v = row.get(k)
            if v is None or isinstance(v, list):
                x[i, j] = np.nan
            elif isinstance(v, bytes):
                raise ValueError(f"feature {k!r} is a string feature")
            else:
                x[i, j] = float(v)
    if np.isnan(x).any():
        raise ValueError("missing value")
    features = {}
    for k in sorted(names):
        vals = [row.get(k) for row in rows]
        vals = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in vals]
        features[k] = np.asarray(vals, dtype=object)
    return examples.ExamplesData(x=x, y=y, features=features, example_hashes=hashes, input_features=keys)


def _reference_load_examples(file_pattern, label_key, feature_keys=None):
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(examples.io.glob(file_pattern), compression_type="GZIP")
    serialized = [r.numpy() for r in ds]
    data = _reference_parse_examples(serialized, label_key, feature_keys)
    order = sorted(range(len(serialized)), key=data.example_hashes.__getitem__)
    idx = np.asarray(order, dtype=np.int64)
    return examples.ExamplesData(x=data.x[idx], y=data.y[idx], features={k: v[idx] for k, v in data.features.items()},
                                 example_hashes=[data.example_hashes[i] for i in order],
                                 input_features=data.input_features)


def _reference_example_columns(serialized, label_key, feature_keys=()):
    import tensorflow as tf

    y = np.zeros(len(serialized), np.int64)
    hashes, feats = [], {k: [] for k in feature_keys}
    for i, s in enumerate(serialized):
        ex = tf.train.Example.FromString(s)
        hashes.append(hashlib.sha1(ex.SerializeToString(deterministic=True)).hexdigest())
        fmap = ex.features.feature
        y[i] = fmap[label_key].int64_list.value[0]
        for k in feature_keys:
            f = fmap.get(k)
            vals = list(getattr(f, f.WhichOneof("kind")).value) if f is not None and f.WhichOneof("kind") else []
            v = vals[0] if vals else None
            feats[k].append(v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
    return y, hashes, {k: np.asarray(v, dtype=object) for k, v in feats.items()}


# ---- fixtures -----------------------------------------------------------------------------------------

def _feature(v):
    import tensorflow as tf

    if isinstance(v, list):
        if v and isinstance(v[0], float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=v))
        if v and isinstance(v[0], bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=v))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=v))
    if isinstance(v, (bool, int, np.integer)):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
    if isinstance(v, (float, np.floating)):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v if isinstance(v, bytes) else v.encode()]))


def _serialize(rows):
    import tensorflow as tf

    return [tf.train.Example(features=tf.train.Features(feature={k: _feature(v) for k, v in row.items()
                                                                 if v is not None})).SerializeToString()
            for row in rows]


def _write_shards(split_dir, records, shards=2):
    import tensorflow as tf

    os.makedirs(split_dir, exist_ok=True)
    for s in range(shards):
        with tf.io.TFRecordWriter(os.path.join(split_dir, f"data-{s:05d}-of-{shards:05d}.gz"), options="GZIP") as w:
            for r in records[s::shards]:
                w.write(r)
    return os.path.join(split_dir, "*")


def _assert_same(new, ref):
    assert new.input_features == ref.input_features
    assert new.x.dtype == ref.x.dtype and new.y.dtype == ref.y.dtype
    assert np.array_equal(new.x, ref.x) and np.array_equal(new.y, ref.y)
    assert new.example_hashes == ref.example_hashes
    assert sorted(new.features) == sorted(ref.features)
    for k in ref.features:
        a, b = new.features[k], ref.features[k]
        assert a.dtype == b.dtype and a.shape == b.shape, k
        assert [type(v) for v in a.tolist()] == [type(v) for v in b.tolist()], k
        assert a.tolist() == b.tolist(), k


# ---- (a), (b): same arrays, order and ids -------------------------------------------------------------

@pytest.mark.medium
def test_digits_decode_identically_to_the_per_record_reader(tmp_path):
    """As CsvExampleGen writes digits: one float feature per pixel, an int64 label, shards in any order."""
    import csv

    path = examples.write_digits_csv(str(tmp_path / "csv"), seed=0)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    records = _serialize([{k: (int(v) if k == "label" else float(v)) for k, v in r.items()} for r in rows])
    pattern = _write_shards(str(tmp_path / "Split-train"), records, shards=3)
    new, ref = examples.load_examples(pattern, "label"), _reference_load_examples(pattern, "label")
    _assert_same(new, ref)
    assert new.x.shape == (1797, 64)
    assert np.array_equal(examples.ids_from_hashes(new.example_hashes),
                          np.array([int(h[:16], 16) for h in ref.example_hashes], dtype=np.uint64))
    # The ids are the digest of each record, whatever the chunking.
    assert examples._decode(records, chunk_size=500).hashes == [examples.example_digest(r).hex() for r in records]


@pytest.mark.medium
def test_table_with_string_slice_and_int_features_decodes_identically(tmp_path):
    rng = np.random.default_rng(3)
    n = 3000
    rows = [{"age": int(rng.integers(18, 90)), "income": float(rng.normal()), "big": int(rng.integers(0, 2**40)),
             "city": ["Oslo", "Lima", "Pune", "Köln"][int(rng.integers(4))], "label": int(rng.integers(3))}
            for _ in range(n)]
    rows[5]["tags"] = [b"a", b"b"]           # a sparse vector feature first seen after the first examples
    rows[2900]["late"] = 7.5                 # a feature first seen in the last chunk
    rows[10]["city"] = None                  # a missing slice value
    records = _serialize(rows)
    pattern = _write_shards(str(tmp_path / "Split-eval"), records)
    for keys in (["age", "big", "income"], ["age", "income"]):
        new, ref = examples.load_examples(pattern, "label", keys), _reference_load_examples(pattern, "label", keys)
        _assert_same(new, ref)
        assert new.features["city"].tolist() == ref.features["city"].tolist()
    for chunk in (examples.DECODE_CHUNK, 700):
        dec = examples._decode(records, chunk_size=chunk)
        assert dec.names == {"age", "income", "big", "city", "label", "tags", "late"}
    # The evaluator's per-batch path and the signature models' columns: same values as before.
    _assert_same(examples.parse_examples(records, "label", ["age", "income"]),
                 _reference_parse_examples(records, "label", ["age", "income"]))
    cols = sm.example_columns(records, "label", ["city", "age", "tags", "nothere"])
    y, hashes, feats = _reference_example_columns(records, "label", ["city", "age", "tags", "nothere"])
    assert np.array_equal(cols.y, y) and cols.y.dtype == y.dtype and cols.example_hashes == hashes
    for k, v in feats.items():
        assert cols.features[k].tolist() == v.tolist() and cols.features[k].dtype == v.dtype, k


# ---- (c): a feature that changes kind names its row ---------------------------------------------------

@pytest.mark.medium
def test_a_feature_turning_to_strings_at_some_row_is_named_with_the_row():
    """Examples written per batch (or by several writers): floats, then a string at row 17,000."""
    rng = np.random.default_rng(0)
    rows = [{"f0": float(v), "f1": float(v) * 2, "label": i % 2} for i, v in enumerate(rng.normal(size=20000))]
    rows[17000]["f1"] = "n/a"
    with pytest.raises(ValueError, match=r"feature 'f1' at row 17000 of the split .*strings \(bytes_list\) where "
                                         r"the rows before it hold floats \(float_list\)"):
        examples.parse_examples(_serialize(rows), "label")


@pytest.mark.medium
def test_a_csv_column_with_one_text_cell_names_that_row():
    """CsvExampleGen infers a column's type over the whole file (tfx_bsl csv_decoder, a CombineGlobally): one
    non-numeric cell makes the column a string feature in every example. The error names the row to fix."""
    rows = [{"f0": float(i), "f1": f"{i * 0.5}".encode(), "label": i % 2} for i in range(20000)]
    rows[17000]["f1"] = b"abc"
    with pytest.raises(ValueError, match=r"feature 'f1' is a string feature.*row 17000 of the split .*b'abc'"):
        examples.parse_examples(_serialize(rows), "label")


# ---- (d): memory --------------------------------------------------------------------------------------


@pytest.mark.medium
def test_decoding_memory_stays_near_the_numeric_arrays():
    """Peak traced memory while decoding 200,000 examples × 20 float features (+ int64 label) must stay below
    2 × (x.nbytes + y.nbytes + the serialized input): the input is held by the caller anyway, x and y are the
    result, and the factor 2 leaves room for the compact columns x is filled from (one float32 column per
    feature), the hex ids the result carries and one chunk of TensorFlow tensors. The per-record reader held a
    dict and Python objects per value for every example: several times that."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from examples_decoding import float_records

    records = float_records(200_000, 20, seed=0)
    serialized_bytes = sum(len(r) for r in records) + sys.getsizeof(b"") * len(records) + 8 * len(records)
    tracemalloc.start()
    try:
        data = examples.parse_examples(records, "label")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data.x.shape == (200_000, 20)
    bound = 2 * (data.x.nbytes + data.y.nbytes + serialized_bytes)
    assert peak < bound, (peak, bound)


# ---- ids: rebuilt in bulk, checked record by record ---------------------------------------------------

def test_ids_rebuilt_in_bulk_equal_protobufs_deterministic_digest():
    """The id is the sha1 of protobuf's deterministic serialization. The decoder rebuilds it from the columns
    and accepts it for a record only when the record is exactly those entries in another order; anything else
    (a vector, a feature seen late, an encoding protobuf would not write) goes through protobuf."""
    import struct

    import tensorflow as tf

    rng = np.random.default_rng(1)
    rows = []
    for i in range(3000):
        rows.append({"a": int(rng.integers(-2**62, 2**62)), "b": None if i % 11 == 0 else float(rng.normal()),
                     "s": ["", "x", "Köln", "long" * 50][i % 4], "n": float("nan") if i % 7 == 0 else 1.0,
                     "c": int(rng.integers(0, 300)), "label": i % 3})
    rows[17]["v"] = [1.0, 2.0]
    records = _serialize(rows)
    # The same example as one float "f" and a label, with its float written unpacked (valid, not canonical).
    f = b"\x0a\x01f\x12\x07\x12\x05\x0d" + struct.pack("<f", 1.5)
    lab = b"\x0a\x05label\x12\x05\x1a\x03\x0a\x01\x01"
    records.append(b"\x0a\x1e" + b"\x0a\x0c" + f + b"\x0a\x0e" + lab)
    assert tf.train.Example.FromString(records[-1]).features.feature["f"].float_list.value[0] == 1.5
    dec = examples._decode(records, chunk_size=1000)
    assert dec.hashes == [examples.example_digest(r).hex() for r in records]
    spec = {"a": "int64_list", "b": "float_list", "s": "bytes_list", "n": "float_list", "c": "int64_list",
            "label": "int64_list"}
    dtypes = {"float_list": tf.float32, "int64_list": tf.int64, "bytes_list": tf.string}
    out = tf.io.parse_example(tf.constant(records[:3000]), {k: tf.io.RaggedFeature(dtypes[v]) for k, v in spec.items()})
    _, good = examples._rebuilt_ids(records[:3000], spec,
                                    {k: (v.values.numpy(), v.row_splits.numpy()) for k, v in out.items()})
    assert good.sum() == 2999 and not good[17]  # every record but the one with a vector feature, in bulk


def test_example_count_check_counts_every_split(tmp_path):
    """Records written by hand into Split-a (3) and Split-b (5): the count is theirs, a known split's count is
    taken as given, and another expected total is refused with both numbers."""
    import tensorflow as tf

    from privacy_audit.components.common.examples import check_example_count, count_records

    for split, n in (("a", 3), ("b", 5)):
        os.makedirs(tmp_path / f"Split-{split}")
        with tf.io.TFRecordWriter(str(tmp_path / f"Split-{split}" / "data.gz"), options="GZIP") as w:
            for i in range(n):
                w.write(tf.train.Example().SerializeToString() + bytes([i]))
    assert count_records(str(tmp_path / "Split-b" / "*")) == 5
    assert check_example_count(str(tmp_path), ["a", "b"], 8) == {"a": 3, "b": 5}
    assert check_example_count(str(tmp_path), ["a", "b"], 9, known={"a": 4}) == {"a": 4, "b": 5}
    with pytest.raises(ValueError, match=r"hold 8 examples \(a: 3, b: 5\) but the source data has 10 rows: "
                                         r"2 rows were lost"):
        check_example_count(str(tmp_path), ["a", "b"], 10)
    with pytest.raises(ValueError, match="1 rows too many"):
        check_example_count(str(tmp_path), ["a", "b"], 7)
