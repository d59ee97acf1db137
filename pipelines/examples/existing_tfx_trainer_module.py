"""The user module of pipelines/examples/existing_tfx_pipeline.py: what a team's TFX pipeline already has.

``preprocessing_fn`` (Transform): the 64 pixels scaled to z-scores (a numeric feature), the ``writer``
string feature through a vocabulary. ``run_fn`` (the standard Trainer): a Keras model on the transformed
features, saved to ``fn_args.serving_model_dir`` with a ``serving_default`` signature that parses serialized
raw tf.Examples and applies the Transform graph itself (the usual TFX serving convention) and outputs class
probabilities. The only privacy-audit line is the AuditCheckpoints callback (checkpoints for the epoch plot).

custom_config: ``epochs`` (30), ``batch_size`` (32), ``hidden_units`` ([512, 512]), ``learning_rate``
(1e-3), ``checkpoint_every`` (0: no checkpoints), ``seed`` (0). The wide MLP on a few hundred digits
memorises its training set: the audit has something to find.
"""

import keras
import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

LABEL_KEY = "label"
PIXEL_KEYS = [f"pixel_{i:02d}" for i in range(64)]
CATEGORICAL_KEY = "writer"
NUM_CLASSES = 10


def preprocessing_fn(inputs):
    """Transform: pixels → z-scores per pixel (one analyzer), writer → vocabulary index."""
    pixels = tf.stack([tf.reshape(inputs[k], [-1]) for k in PIXEL_KEYS], axis=1)
    return {
        "pixels_xf": tft.scale_to_z_score(pixels, elementwise=True),
        "writer_xf": tft.compute_and_apply_vocabulary(tf.reshape(inputs[CATEGORICAL_KEY], [-1]),
                                                      num_oov_buckets=1, vocab_filename="writer"),
        LABEL_KEY: tf.reshape(inputs[LABEL_KEY], [-1]),
    }


def _dataset(file_pattern, data_accessor, tf_transform_output, batch_size, seed):
    return data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=LABEL_KEY, num_epochs=1, shuffle=True,
                                       shuffle_seed=seed),
        tf_transform_output.transformed_metadata.schema)


def _build_model(vocab_size, hidden_units, learning_rate):
    pixels = keras.Input(shape=(64,), name="pixels_xf")
    writer = keras.Input(shape=(1,), name="writer_xf", dtype="int64")
    emb = keras.layers.Flatten()(keras.layers.Embedding(vocab_size + 1, 4)(writer))
    h = keras.layers.Concatenate()([pixels, emb])
    for units in hidden_units:
        h = keras.layers.Dense(units, activation="relu")(h)
    probs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(h)
    model = keras.Model(inputs={"pixels_xf": pixels, "writer_xf": writer}, outputs=probs)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    return model


def _model_inputs(transformed):
    return {"pixels_xf": transformed["pixels_xf"], "writer_xf": tf.reshape(transformed["writer_xf"], [-1, 1])}


def serving_signatures(tf_transform_output):
    """``model -> signatures``: ``serving_default`` (serialized raw tf.Examples → Transform → model →
    probabilities) and ``transformed_examples`` (serialized transformed tf.Examples → model)."""

    def make(model):
        model.tft_layer = tf_transform_output.transform_features_layer()
        raw_spec = tf_transform_output.raw_feature_spec()
        raw_spec.pop(LABEL_KEY)
        transformed_spec = tf_transform_output.transformed_feature_spec()
        transformed_spec.pop(LABEL_KEY)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(serialized):
            transformed = model.tft_layer(tf.io.parse_example(serialized, raw_spec))
            return {"probabilities": model(_model_inputs(transformed))}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_transformed(serialized):
            return {"probabilities": model(_model_inputs(tf.io.parse_example(serialized, transformed_spec)))}

        return {"serving_default": serve, "transformed_examples": serve_transformed}

    return make


def run_fn(fn_args):
    """The standard Trainer's entry point (tfx.v1.components.Trainer(module_file=...))."""
    from privacy_audit.components.common.audit_checkpoints import AuditCheckpoints

    config = dict(fn_args.custom_config or {})
    seed = int(config.get("seed", 0))
    keras.utils.set_random_seed(seed)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    batch_size = int(config.get("batch_size", 32))
    train = _dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch_size, seed)
    evaluation = _dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch_size, seed)
    train = train.map(lambda x, y: (_model_inputs(x), y))
    evaluation = evaluation.map(lambda x, y: (_model_inputs(x), y))
    vocab_size = tf_transform_output.vocabulary_size_by_name("writer")
    model = _build_model(vocab_size, list(config.get("hidden_units", [512, 512])),
                         float(config.get("learning_rate", 1e-3)))
    signatures = serving_signatures(tf_transform_output)
    callbacks = []
    if int(config.get("checkpoint_every", 0)):
        callbacks.append(AuditCheckpoints(fn_args, every_n_epochs=int(config["checkpoint_every"]),
                                          signatures=signatures))
    model.fit(train, validation_data=evaluation, epochs=int(config.get("epochs", 30)), verbose=0,
              callbacks=callbacks)
    tf.saved_model.save(model, fn_args.serving_model_dir, signatures=signatures(model))
