"""Per-example outputs of any SavedModel with a signature over serialized tf.Examples: the Model artifact of
TFX's standard Trainer (``<uri>/Format-Serving/``, what ``run_fn`` saves to ``fn_args.serving_model_dir``).

This is how TFMA's Evaluator reads a model, and what the MembershipInferenceEvaluator and the
ReferenceModelTrainer use for models this project did not train:

    serving = ServingModel(path, ServingOptions(signature_name="serving_default", output_key=None,
                                                outputs="auto", transform_graph=None))
    serving.resolve(probe)        # once, on a few examples: output key, logits or probabilities, transform
    scores = serving(serialized)  # [n, C] float64: logits or probabilities (``serving.kind``)

Detection ("when unambiguous"): the output is the signature's only output, or its only rank-2 float
output; the kind is "probabilities" when every probe row lies in [0, 1] and sums to 1 (within 1e-4), and
"logits" when some row does not. A single-column output in [0, 1] could be either: the caller must say.

Transform: the usual TFX serving signature parses raw examples and applies the Transform graph itself
(``model.tft_layer``). With ``transform_graph`` (a TFX TransformGraph directory) the examples are checked
against the graph's raw schema and, when the signature refuses the raw examples, transformed first and
re-serialized (a signature over transformed tf.Examples, the ``transformed_examples`` convention).

No TFX import here (``tensorflow_transform`` only when a transform graph is given).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

OUTPUT_KINDS = ("auto", "logits", "probabilities")
from privacy_audit.components.common.layout import SERVING_DIR  # noqa: E402
#: Rows of probabilities must sum to 1 within this (float32 softmax rounding is ~1e-7).
PROBABILITY_TOLERANCE = 1e-4
TRANSFORM_MODES = ("none", "inside", "before")


@dataclasses.dataclass(frozen=True)
class ServingOptions:
    """How to read a SavedModel's outputs.

    signature_name: the signature over serialized tf.Examples (TFX's ``serving_default``).
    output_key: the output holding the class scores [batch, classes] (None: detected).
    outputs: "logits", "probabilities" or "auto" (detected on a probe batch).
    transform_graph: a TFX TransformGraph directory (None: the signature takes raw examples).
    transform_mode: "none", "inside" (the signature applies the graph) or "before" (examples transformed
      here); resolved by :meth:`ServingModel.resolve` when a graph is given.
    """
    signature_name: str = "serving_default"
    output_key: Optional[str] = None
    outputs: str = "auto"
    transform_graph: Optional[str] = None
    transform_mode: Optional[str] = None

    def __post_init__(self) -> None:
        if self.outputs not in OUTPUT_KINDS:
            raise ValueError(f"outputs must be one of {OUTPUT_KINDS}, got {self.outputs!r}")
        if not self.signature_name:
            raise ValueError("signature_name must name a signature of the SavedModel, e.g. 'serving_default'")
        if self.transform_mode is not None and self.transform_mode not in TRANSFORM_MODES:
            raise ValueError(f"transform_mode must be one of {TRANSFORM_MODES}, got {self.transform_mode!r}")

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def is_saved_model_dir(path: str) -> bool:
    import tensorflow as tf

    return tf.io.gfile.exists(path.rstrip("/") + "/saved_model.pb")


def _describe(spec) -> str:
    return f"{spec.dtype.name}{list(spec.shape) if spec.shape.rank is not None else '[?]'}"


class ServingModel:
    """A SavedModel signature over serialized tf.Examples, called on lists of serialized examples.

    ``path``: the SavedModel directory. Raises ValueError naming the problem (signature absent, input not
    serialized tf.Example, output key absent, outputs not [batch, classes]) when loaded.
    """

    def __init__(self, path: str, options: ServingOptions = ServingOptions()):
        import tensorflow as tf

        self.path = path
        self.options = options
        if not is_saved_model_dir(path):
            raise ValueError(f"{path} is not a SavedModel directory (no saved_model.pb)")
        self._loaded = tf.saved_model.load(path)
        signatures = dict(self._loaded.signatures)
        if options.signature_name not in signatures:
            raise ValueError(f"the SavedModel at {path} has no signature {options.signature_name!r} "
                             f"(signatures: {sorted(signatures) or 'none'}); set signature_name")
        self._fn = signatures[options.signature_name]
        self.input_name = self._string_input()
        self.output_key = self._output_key()
        self.kind: Optional[str] = None if options.outputs == "auto" else options.outputs
        self.transform_mode = options.transform_mode or ("none" if options.transform_graph is None else None)
        self._transform = None

    def _string_input(self) -> str:
        _, kwargs = self._fn.structured_input_signature
        described = {k: _describe(v) for k, v in kwargs.items()}
        strings = [k for k, v in kwargs.items() if v.dtype.name == "string" and (v.shape.rank in (None, 1))]
        if len(kwargs) != 1 or len(strings) != 1:
            raise ValueError(f"signature {self.options.signature_name!r} of {self.path} does not take serialized "
                             f"tf.Examples (one string tensor [batch]); it takes {described}. Export a signature "
                             "that parses serialized examples (the TFX serving convention) and name it with "
                             "signature_name")
        return strings[0]

    def _output_key(self) -> str:
        outputs = self._fn.structured_outputs
        described = {k: _describe(v) for k, v in outputs.items()}
        key = self.options.output_key
        if key is not None:
            if key not in outputs:
                raise ValueError(f"output_key {key!r} is not an output of signature "
                                 f"{self.options.signature_name!r} (outputs: {described})")
        elif len(outputs) == 1:
            key = next(iter(outputs))
        else:
            candidates = [k for k, v in outputs.items() if v.shape.rank == 2 and v.dtype.is_floating]
            if len(candidates) != 1:
                raise ValueError(f"signature {self.options.signature_name!r} has several outputs {described}; "
                                 "set output_key to the one holding the class scores [batch, classes]")
            key = candidates[0]
        spec = outputs[key]
        if spec.shape.rank is not None and spec.shape.rank != 2 or not spec.dtype.is_floating:
            raise ValueError(f"output {key!r} of signature {self.options.signature_name!r} is {_describe(spec)}; "
                             "the audit needs class scores of shape [batch, classes] (float)")
        return key

    # -----------------------------------------------------------------------------------------------------
    def resolve(self, probe: Sequence[bytes]) -> "ServingOptions":
        """Settles the transform mode and the output kind on ``probe`` (a few serialized examples); returns
        the options with everything resolved (for the workers, which then skip detection)."""
        if not probe:
            raise ValueError("no examples to probe the model with (empty split)")
        if self.options.transform_graph is not None and self.transform_mode is None:
            self._check_transform_matches(probe)
            try:
                self._call(list(probe), mode="inside")
                self.transform_mode = "inside"
            except Exception:  # the signature parses transformed features: transform first
                self.transform_mode = "before"
        scores = self._call(list(probe), mode=self.transform_mode)
        if self.kind is None:
            self.kind = detect_kind(scores, self.output_key)
        check_scores(scores, self.kind, self.output_key)
        return dataclasses.replace(self.options, output_key=self.output_key, outputs=self.kind,
                                   transform_mode=self.transform_mode)

    def __call__(self, serialized: Sequence[bytes]) -> np.ndarray:
        """[n, C] float64 scores (``self.kind``) of the serialized examples; validated."""
        if self.kind is None or self.transform_mode is None:
            raise RuntimeError("call resolve(probe) first (or give outputs and transform_mode)")
        if len(serialized) == 0:
            return np.zeros((0, 0), np.float64)
        scores = self._call(list(serialized), mode=self.transform_mode)
        check_scores(scores, self.kind, self.output_key)
        return scores

    def _call(self, serialized: List[bytes], mode: str) -> np.ndarray:
        import tensorflow as tf

        if mode == "before":
            serialized = self._transformer().serialize_transformed(serialized)
        out = self._fn(**{self.input_name: tf.constant(serialized, dtype=tf.string)})[self.output_key]
        scores = np.asarray(out, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[0] != len(serialized):
            raise ValueError(f"output {self.output_key!r} has shape {list(scores.shape)} for {len(serialized)} "
                             "examples; the audit needs [batch, classes]")
        return scores

    def _transformer(self) -> "TransformGraph":
        if self._transform is None:
            self._transform = TransformGraph(self.options.transform_graph)
        return self._transform

    def _check_transform_matches(self, probe: Sequence[bytes]) -> None:
        self._transformer().check_examples(probe)


def detect_kind(scores: np.ndarray, output_key: str) -> str:
    """"probabilities" or "logits" from a probe batch [n, C]; ValueError when the values cannot tell."""
    in_unit = bool(np.all((scores >= 0) & (scores <= 1)))
    sums_to_one = bool(np.all(np.abs(scores.sum(axis=1) - 1.0) <= PROBABILITY_TOLERANCE))
    if scores.shape[1] == 1:
        if in_unit:
            raise ValueError(f"output {output_key!r} has one column with values in [0, 1]: it could be a "
                             "probability or a logit; set outputs to 'probabilities' or 'logits'")
        return "logits"
    return "probabilities" if in_unit and sums_to_one else "logits"


def check_scores(scores: np.ndarray, kind: str, output_key: str) -> None:
    """ValueError when the scores are not finite, or declared probabilities whose rows do not sum to 1."""
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"output {output_key!r} has {int((~np.isfinite(scores)).sum())} non-finite values")
    if kind == "probabilities" and scores.shape[1] > 1:
        err = np.abs(scores.sum(axis=1) - 1.0)
        if np.any(err > PROBABILITY_TOLERANCE) or np.any(scores < 0):
            raise ValueError(f"output {output_key!r} is declared probabilities but {int((err > PROBABILITY_TOLERANCE).sum())} "
                             f"of {len(err)} rows do not sum to 1 (largest |sum - 1| = {float(err.max()):.3g}); "
                             "set outputs='logits' if the model outputs logits")


def as_logits(scores: np.ndarray, kind: str) -> np.ndarray:
    """Logits equivalent for the attacks' softmax: log-probabilities (softmax(log p) = p), or the logits."""
    if kind == "probabilities":
        if scores.shape[1] == 1:  # P(class 1) of a binary model
            p = np.clip(scores[:, 0], 1e-30, 1.0)
            return np.stack([np.log(np.clip(1.0 - p, 1e-30, 1.0)), np.log(p)], axis=1)
        return np.log(np.clip(scores, 1e-30, None))
    return scores


class TransformGraph:
    """A TFX TransformGraph directory (tf.Transform output) applied to serialized raw examples."""

    def __init__(self, path: str):
        import tensorflow_transform as tft

        self.path = path
        self._output = tft.TFTransformOutput(path)
        self.raw_spec = self._output.raw_feature_spec()
        self._layer = self._output.transform_features_layer()

    def check_examples(self, serialized: Sequence[bytes]) -> None:
        """ValueError when the examples lack features of the graph's raw schema or do not parse with it."""
        import tensorflow as tf

        present = set()
        for s in serialized:
            present.update(tf.train.Example.FromString(s).features.feature.keys())
        missing = sorted(k for k, v in self.raw_spec.items()
                         if k not in present and isinstance(v, tf.io.FixedLenFeature) and v.default_value is None)
        if missing:
            raise ValueError(f"the Transform graph at {self.path} does not match the examples: its raw features "
                             f"{missing} are not in them (examples have {sorted(present)[:20]})")
        try:
            tf.io.parse_example(tf.constant(list(serialized)), self.raw_spec)
        except tf.errors.InvalidArgumentError as e:
            raise ValueError(f"the Transform graph at {self.path} does not match the examples: "
                             f"{str(e).splitlines()[0]}") from None

    def serialize_transformed(self, serialized: Sequence[bytes]) -> List[bytes]:
        """The transformed features of each example, as serialized tf.Examples."""
        import tensorflow as tf

        raw = tf.io.parse_example(tf.constant(list(serialized)), self.raw_spec)
        out = self._layer(raw)
        cols = {k: _dense(v).numpy() for k, v in out.items()}
        return [_example(cols, i).SerializeToString() for i in range(len(serialized))]


def _dense(t):
    import tensorflow as tf

    if isinstance(t, tf.SparseTensor):
        return tf.sparse.to_dense(t)
    if isinstance(t, tf.RaggedTensor):
        return t.to_tensor()
    return t


def _example(cols: Dict[str, np.ndarray], i: int):
    import tensorflow as tf

    feats = {}
    for k, arr in cols.items():
        v = np.asarray(arr[i]).reshape(-1)
        if v.dtype.kind in "fc":
            feats[k] = tf.train.Feature(float_list=tf.train.FloatList(value=v.astype(np.float32)))
        elif v.dtype.kind in "iub":
            feats[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=v.astype(np.int64)))
        else:
            feats[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[bytes(x) for x in v]))
    return tf.train.Example(features=tf.train.Features(feature=feats))


# ---------------------------------------------------------------------------------------------------------
# Labels, ids and slicing features without a model input vector
# ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ExampleColumns:
    """What the audit reads from raw examples besides the model: ``y`` int64 [n], ``example_hashes`` (hex
    sha1 of each example's deterministic serialization, as examples.example_digest), ``features`` (the
    requested features, first value of each example; bytes decoded)."""
    y: np.ndarray
    example_hashes: List[str]
    features: Dict[str, np.ndarray]


def example_columns(serialized: Sequence[bytes], label_key: str,
                    feature_keys: Sequence[str] = ()) -> ExampleColumns:
    """Labels, ids and ``feature_keys`` of serialized tf.Examples (any feature types: the model reads the
    examples itself), decoded as columns (``examples._decode``). ValueError naming the label key when an
    example has no integer label."""
    import tensorflow as tf

    from privacy_audit.components.common import examples as examples_lib

    keys = list(dict.fromkeys([label_key, *feature_keys]))
    dec = examples_lib._decode(serialized, keys)
    lab = dec.columns.get(label_key)
    n = len(serialized)
    if lab is None or lab.kind != "int64_list":
        bad = np.ones(n, bool)
    else:
        bad = np.zeros(n, bool) if lab.lengths is None else lab.lengths != 1
    if n and bad.any():
        i = int(np.argmax(bad))
        fmap = tf.train.Example.FromString(serialized[i]).features.feature
        if label_key not in fmap:
            raise ValueError(f"label key {label_key!r} is not a feature of example {i} "
                             f"(features: {sorted(fmap.keys())[:20]})")
        raise ValueError(f"label key {label_key!r} must hold one integer class id per example; example {i} "
                         f"has {fmap[label_key].WhichOneof('kind') or 'no value'}")
    y = lab.values.astype(np.int64, copy=False) if n else np.zeros(0, np.int64)
    features = {k: dec.columns[k].first_values() if k in dec.columns else np.full(n, None, dtype=object)
                for k in feature_keys}
    return ExampleColumns(y=y, example_hashes=dec.hashes, features=features)


# ---------------------------------------------------------------------------------------------------------
# One model per worker process
# ---------------------------------------------------------------------------------------------------------

_CACHE: Dict[Tuple[str, str], ServingModel] = {}
_LOCK = threading.Lock()


def load_serving_model(path: str, options: ServingOptions) -> ServingModel:
    """A resolved ServingModel (``options.outputs`` and, with a graph, ``transform_mode`` set), cached per
    process so that a Beam worker loads each model once."""
    if options.outputs == "auto" or (options.transform_graph and options.transform_mode is None):
        raise ValueError("load_serving_model needs resolved options (ServingModel.resolve)")
    key = (path, repr(options))
    with _LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = ServingModel(path, options)
            _CACHE[key] = model
        return model


def read_probe(file_pattern: str, n: int = 64) -> List[bytes]:
    """The first ``n`` serialized examples of the GZIP TFRecord files matching ``file_pattern``."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise ValueError(f"no files match {file_pattern}")
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").take(n)
    return [r.numpy() for r in ds]
