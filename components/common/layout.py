"""Artifact layouts: every file and folder name that one component writes and another reads, in one place
(as TFX's ``constants.py``). Paths inside an artifact are joined with ``io.join`` onto the artifact's URI.

Model (DPTrainer; a standard TFX Trainer writes only ``Format-Serving/``)::

    keras/model.keras             the final Keras model (fed the feature vector)
    Format-Serving/               SavedModel with a signature over serialized tf.Examples
    checkpoints/epoch_NNNN.keras  per-epoch checkpoints; checkpoints/index.json lists them
    model_info.json               input features, classes, the recipe as trained

ModelRun (DPTrainer)::

    ledger.json  training_log.jsonl  logs/  one_run_audit.json

ReferenceModels::

    reference_signals.npz  reference_info.json

MembershipInferenceResults (evaluator)::

    results/<model key>.json  index.json  per_example/<model key>/part-*.parquet
    per_example_reference/<final key>.parquet

ModelBlessing (evaluator)::

    blessing.json  BLESSED | NOT_BLESSED

PrivacyReport::

    report.html  summary.json  (and the audit history under ``audit_history/``)
"""

# Model
KERAS_FINAL = "keras/model.keras"
SERVING_DIR = "Format-Serving"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_INDEX = "index.json"  # inside CHECKPOINT_DIR
MODEL_INFO_FILE = "model_info.json"
# ModelRun
LEDGER_FILE = "ledger.json"
TRAINING_LOG_FILE = "training_log.jsonl"
TENSORBOARD_DIR = "logs"
ONE_RUN_AUDIT_FILE = "one_run_audit.json"
# ReferenceModels
SIGNALS_FILE = "reference_signals.npz"
#: Beside it: one row per example (id, label, K LiRA and K RMIA signals, K inclusion bits), what the evaluator's
#: Beam pipeline joins with the target's records.
SIGNALS_PARQUET_FILE = "reference_signals.parquet"
REFERENCE_INFO_FILE = "reference_info.json"
# MembershipInferenceResults
RESULTS_DIR = "results"
RESULTS_INDEX = "index.json"
PER_EXAMPLE_DIR = "per_example"
PER_EXAMPLE_REFERENCE_DIR = "per_example_reference"
# ModelBlessing
BLESSING_FILE = "blessing.json"
BLESSED_MARKER = "BLESSED"
NOT_BLESSED_MARKER = "NOT_BLESSED"
# PrivacyReport
REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"
HISTORY_DIR = "audit_history"
