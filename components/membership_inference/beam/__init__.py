"""Membership-inference audits as Apache Beam pipelines: for data sets too large for one process, and for the
TFX evaluator (any Beam runner through ``beam_pipeline_args``).

    sources.py      record batches from saved outputs (.npz, Parquet) or from TFX Examples + models
    transforms.py   prepare → slices → attacks (mergeable counts, seeded samples) → results per model
    reference.py    LiRA / RMIA: the records joined by example id with the reference models' Parquet signals
    driver.py       audit_saved_outputs, audit_examples: build, run, collect

Elements are column batches of per-example records (:mod:`..records`), never single examples.
"""

from privacy_audit.components.membership_inference.api import DuplicateExamplesWarning  # noqa: F401
from privacy_audit.components.membership_inference.beam.driver import (  # noqa: F401
    audit_examples, audit_saved_outputs, pipeline_options)
from privacy_audit.components.membership_inference.beam.reference import ReferenceAttackSpec  # noqa: F401
from privacy_audit.components.membership_inference.beam.sources import ModelToEvaluate, inspect_split  # noqa: F401
from privacy_audit.components.membership_inference.settings import (  # noqa: F401
    DEFAULT_SAMPLE_SIZE, AuditSettings, OutputTarget)
