"""Reading TFX Examples into arrays, and the embedded digits data."""

import csv
import os

import numpy as np
import pytest

from privacy_audit.components.common import examples


def _write_split(path, rows):
    import tensorflow as tf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for row in rows:
            feats = {}
            for k, v in row.items():
                if isinstance(v, int):
                    feats[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
                elif isinstance(v, float):
                    feats[k] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
                else:
                    feats[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()]))
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())


def test_digits_csv_matches_sklearn(tmp_path):
    from sklearn.datasets import load_digits

    path = examples.write_digits_csv(str(tmp_path), seed=0)
    with open(path) as f:
        rows = list(csv.reader(f))
    assert rows[0] == examples.DIGITS_FEATURES + ["label"]
    assert len(rows) == 1798
    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    first = np.array([float(v) for v in rows[1][:64]])
    np.testing.assert_allclose(first, d.data[order[0]] / 16.0, atol=1e-4)
    assert int(rows[1][64]) == d.target[order[0]]


def test_load_examples_orders_features_by_name_and_reads_labels(tmp_path):
    f = str(tmp_path / "Split-train" / "data.gz")
    _write_split(f, [{"b": 2.0, "a": 1.0, "label": 3, "city": "Oslo"},
                     {"b": 5.0, "a": 4.0, "label": 1, "city": "Lima"}])
    data = examples.load_examples(examples.split_file_pattern(str(tmp_path), "train"), "label",
                                  feature_keys=["a", "b"])
    by_city = {c: i for i, c in enumerate(data.features["city"])}
    np.testing.assert_array_equal(data.x[[by_city["Oslo"], by_city["Lima"]]], [[1, 2], [4, 5]])
    np.testing.assert_array_equal(data.y[[by_city["Oslo"], by_city["Lima"]]], [3, 1])
    assert len(set(data.example_hashes)) == 2


def test_load_examples_order_does_not_depend_on_the_shards(tmp_path):
    """ExampleGen's workers may put any example in any shard, and protobuf may write an example's features in
    any order: the arrays come back in one canonical order, so the same seed draws the same training batches."""
    rows = [{"a": float(i), "label": i % 3} for i in range(40)]
    _write_split(str(tmp_path / "one" / "Split-train" / "data-0.gz"), rows[:25])
    _write_split(str(tmp_path / "one" / "Split-train" / "data-1.gz"), rows[25:])
    _write_split(str(tmp_path / "two" / "Split-train" / "data-0.gz"), rows[30:] + rows[:7])
    _write_split(str(tmp_path / "two" / "Split-train" / "data-1.gz"), rows[7:30][::-1])
    one, two = (examples.load_examples(examples.split_file_pattern(str(tmp_path / d), "train"), "label")
                for d in ("one", "two"))
    np.testing.assert_array_equal(one.x, two.x)
    np.testing.assert_array_equal(one.y, two.y)
    assert sorted(one.x[:, 0].tolist()) == [float(i) for i in range(40)]


def test_missing_label_key_is_named(tmp_path):
    f = str(tmp_path / "Split-train" / "data.gz")
    _write_split(f, [{"a": 1.0, "label": 0}])
    with pytest.raises(ValueError, match="label key 'target'"):
        examples.load_examples(f, "target")


def test_missing_feature_key_is_named(tmp_path):
    f = str(tmp_path / "Split-train" / "data.gz")
    _write_split(f, [{"a": 1.0, "label": 0}])
    with pytest.raises(ValueError, match=r"feature key\(s\) \['zz'\] not found"):
        examples.load_examples(f, "label", feature_keys=["zz"])


def test_empty_split_is_an_error(tmp_path):
    f = str(tmp_path / "Split-train" / "data.gz")
    _write_split(f, [])
    with pytest.raises(ValueError, match="has no examples"):
        examples.load_examples(f, "label")


def test_unknown_split_lists_the_splits(tmp_path):
    _write_split(str(tmp_path / "Split-train" / "d.gz"), [{"a": 1.0, "label": 0}])
    with pytest.raises(ValueError, match=r"split 'eval' not found .*\['train'\]"):
        examples.split_file_pattern(str(tmp_path), "eval")
