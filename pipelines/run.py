"""`privacy-audit run`: the whole audit pipeline on this machine with TFX's LocalDagRunner, ML Metadata
in SQLite under the output directory, and Beam's DirectRunner with multi-processing.

Settings come from defaults, then a config file (YAML or JSON, ``--config``), then the command line.
Output directory layout:

    DIR/report.html, DIR/summary.json, DIR/report/ (plots)   copied from the newest PrivacyReport artifact
    DIR/pipeline_root/                                       every artifact of every run (TFX layout)
    DIR/metadata.sqlite                                      ML Metadata: lineage, cache, earlier runs
    DIR/data/digits/digits.csv                               the embedded demo data (when no data is given)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from privacy_audit.components.common.recipe import DEFAULT_TARGET_EPSILON, TrainingRecipe
from privacy_audit.pipelines import validation
from privacy_audit.pipelines.pipeline import (DEFAULT_PIPELINE_NAME, DP_DEEP_RECIPE, AuditSpec, VariantSpec,
                                              default_variants)

# A variant's recipe takes its settings by the TrainingRecipe's own field names (no name map; ``model`` is the
# command line's name for ``builtin_model``). The seed and the one-run audit's canaries are the pipeline's,
# set on every variant by create_pipeline.
RECIPE_KEYS = tuple(k for k in TrainingRecipe.field_names() if k not in ("seed", "audit_canaries"))
_RECIPE = TrainingRecipe()  # the defaults of the variants a user defines

# Every key a config file may hold, with its default. Variant-level keys apply to every variant unless
# `variants` lists them one by one; None keeps each variant's own value (the demo variants' own, else the
# TrainingRecipe default).
DEFAULTS: Dict[str, Any] = {
    "data": None,                # directory of CSV files or GZIP TFRecords of tf.Example
    "examples": None,            # an existing TFX Examples artifact directory (Split-train/, Split-eval/)
    "label_key": None,           # default "label" for the embedded data
    "feature_keys": None,
    "module_file": None,
    "model_fn": _RECIPE.model_fn,
    "model": None,               # built-in model when no module_file: auto, cnn, mlp, softmax_regression
                                 # (default: each demo variant's own: the non-private MLP
                                 # 64-512-512-10, the DP variant's softmax regression)
    "epochs": _RECIPE.epochs,
    "batch_size": None,          # default: the demo variants' own, scaled with the data (pipeline.scaled_defaults:
                                 # 16 non-private, 128 DP on digits; 256 and 1024 at ~100k members, DP 4096 from 400k)
    "learning_rate": None,       # default: the demo variants' own (1e-3 non-private; DP 2e-2 for the softmax
                                 # regression, 1e-2 with cosine decay for any other model); 1e-3 in yours
    "members_fraction": 0.5,     # share of the data that trains the models (members); the rest are non-members
    "optimizer": _RECIPE.optimizer,
    "lr_schedule": None,         # constant | cosine; default: constant, the DP variant of a deep model cosine
    "l2_norm_clip": None,        # default: the demo DP variant's own; 1.0 in variants you define
    "noise_multiplier": None,
    "target_epsilon": None,      # default: the demo DP variant's own; 3.0 in variants you define
    "delta": None,
    "sampling": _RECIPE.sampling,
    "accountant": _RECIPE.accountant,
    "checkpoint_every": _RECIPE.checkpoint_every,
    "hparams": None,
    "variants": None,            # list of {name, private, ...TrainingRecipe fields}
    "attacks": ["threshold", "logistic_regression"],
    "slicing": ["entire_dataset", "by_class"],
    "slice_feature_keys": None,
    "min_slice_size": 20,
    "max_auc": None,
    "max_attacker_advantage": None,
    "max_epsilon_lower_bound": None,
    # K reference models per variant for LiRA / RMIA (0 = off). None: DEMO_REFERENCE_MODELS on the embedded
    # digits demo, 0 (opt in) with your own data, where each reference costs one more training run.
    "reference_models": None,
    "reference_init": "target",  # "target" (the target's initialisation) or "independent"
    "reference_attacks": None,   # default: lira, lira_offline, rmia
    "reference_options": None,   # e.g. {lira: {fixed_variance: auto}, rmia: {gamma: 1.0, offline_a: 0.3}}
    # One-run privacy audit of every private variant with this many canaries (0 = off). None: DEMO_AUDIT_CANARIES
    # on the embedded demo, 0 with your own data (one more training run per private variant).
    "audit_canaries": None,
    "seed": _RECIPE.seed,
    "pipeline_name": DEFAULT_PIPELINE_NAME,
    "title": "Privacy audit",
    "beam_pipeline_args": None,
    "direct_num_workers": 1,     # 1: the DirectRunner in this process; N > 1: N worker processes (local_beam_args)
    "cache": True,
    # Object-store runs (issue 10): artifacts may go to a bucket; ML Metadata (SQLite) always stays local.
    "pipeline_root": None,      # default: <output-dir>/pipeline_root
    "metadata_path": None,      # default: <output-dir>/metadata.sqlite, or ./privacy_audit_local/ for a bucket
    "history_uri": None,        # audit history (trend source); default: <pipeline_root>/audit_history
    "max_auc_increase": None,   # drift gate: refuse the blessing when the max AUC rose more than this
    "resources": None,           # compile-kfp only: {component kind: {cpu_request, memory_limit, gpu_count, ...}}
}
VARIANT_KEYS = {"name", *RECIPE_KEYS}
# Measured on 2 cores (see the project notes): the demo with both stays well under 10 minutes.
DEMO_REFERENCE_MODELS = 4
DEMO_AUDIT_CANARIES = 0
SLICINGS = ("entire_dataset", "by_class", "by_percentiles", "by_classification_correctness")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="privacy_audit_output", help="where everything goes (default: %(default)s); "
                   "a bucket URI (gs://B/dir) works too")
    p.add_argument("--pipeline-root", help="where the artifacts go (default: OUTPUT_DIR/pipeline_root); gs://... works")
    p.add_argument("--metadata-path", help="local SQLite file of ML Metadata (default: OUTPUT_DIR/metadata.sqlite, "
                   "or privacy_audit_local/metadata.sqlite when OUTPUT_DIR is a bucket)")
    p.add_argument("--history-uri", help="audit history folder (default: PIPELINE_ROOT/audit_history)")
    p.add_argument("--max-auc-increase", type=float,
                   help="drift gate: refuse the blessing when the max AUC rose more than this since the last run")
    p.add_argument("--config", help="YAML or JSON file with any of the settings below (command line wins)")
    p.add_argument("--data", help="directory of CSV files (or GZIP TFRecords of tf.Example); default: embedded digits")
    p.add_argument("--examples", help="an existing TFX Examples directory (Split-train/, Split-eval/)")
    p.add_argument("--label-key", help="the label column/feature (default for the embedded data: label)")
    p.add_argument("--feature-keys", help="comma-separated input features, in model input order")
    p.add_argument("--module-file", help="Python file defining build_keras_model(hparams) -> keras.Model")
    p.add_argument("--model-fn", help="name of that function (default: build_keras_model)")
    p.add_argument("--model", help="built-in model when no module file: auto, cnn, mlp, softmax_regression")
    p.add_argument("--epochs", type=int)
    p.add_argument("--members-fraction", type=float,
                   help="share of the examples that train the models (members); the rest are non-members "
                        "(default 0.5)")
    p.add_argument("--batch-size", type=int, help="expected batch size (Poisson sampling rate = batch/N)")
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--optimizer", choices=["adam", "sgd"])
    p.add_argument("--lr-schedule", choices=["constant", "cosine"],
                   help="learning-rate schedule (default: constant; cosine for the DP variant of a deep model)")
    p.add_argument("--l2-norm-clip", type=float,
                   help="per-example gradient clip norm C (default: the demo DP variant's, 4; 1.0 in variants you define)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--noise-multiplier", type=float, help="σ of the DP variant")
    g.add_argument("--target-epsilon", type=float,
                   help="ε of the DP variant (default: the demo's, 1; 3 in variants you define); σ is calibrated")
    p.add_argument("--delta", type=float,
                   help="δ, below 1/N (default: the largest power of ten not above 1/N^1.1; δ >= 1/N is refused)")
    p.add_argument("--sampling", choices=["poisson", "shuffle"])
    p.add_argument("--accountant", choices=["rdp", "pld"])
    p.add_argument("--checkpoint-every", type=int, help="save and attack a checkpoint every k epochs (default 2)")
    p.add_argument("--attacks", help="comma-separated: threshold, threshold_entropy, logistic_regression, mlp, "
                                     "random_forest, knn (with --reference-models also lira, lira_offline, rmia, "
                                     "rmia_offline)")
    p.add_argument("--reference-models", type=int, metavar="K",
                   help=f"train K reference models per variant (its recipe, each on a random subset of the "
                        f"members and non-members as large as its training set) and add LiRA and RMIA to the attacks; 0 = off (default: "
                        f"{DEMO_REFERENCE_MODELS} on the embedded demo, 0 with your own data)")
    p.add_argument("--reference-init", choices=["target", "independent"],
                   help="reference models start from the target's initialisation (default) or their own")
    p.add_argument("--reference-attacks", help="comma-separated reference attacks (default: lira,lira_offline,rmia)")
    p.add_argument("--audit-canaries", type=int, metavar="M",
                   help="one-run privacy audit (Steinke et al. 2023) of each DP variant with M canaries: one more "
                        "training run; the gate fails when its ε lower bound exceeds the accountant's ε "
                        f"(default: {DEMO_AUDIT_CANARIES} on the embedded demo, 0 with your own data)")
    p.add_argument("--slicing", help=f"comma-separated: {', '.join(SLICINGS)}")
    p.add_argument("--slice-feature-keys", help="comma-separated features whose values define extra slices")
    p.add_argument("--max-auc", type=float, help="privacy gate: fail when any slice's AUC exceeds this")
    p.add_argument("--max-attacker-advantage", type=float)
    p.add_argument("--max-epsilon-lower-bound", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--direct-num-workers", type=int,
                   help="Beam DirectRunner worker processes for ExampleGen (default 1: in this process; 2 makes a "
                        "million-row CSV ~1.6x faster to import for ~2x the memory)")
    p.add_argument("--beam-pipeline-arg", action="append", dest="beam_pipeline_args",
                   help="extra Beam argument, repeatable (e.g. --beam-pipeline-arg=--runner=FlinkRunner)")
    p.add_argument("--no-cache", dest="cache", action="store_const", const=False,
                   help="rerun every component even when its inputs are unchanged")


def _split_list(v):
    if v is None or isinstance(v, list):
        return v
    return [s.strip() for s in str(v).split(",") if s.strip()]


def _parse_config_text(path: str, text: str) -> Any:
    """The config's value: JSON for ``.json``, else YAML with plain values only (no ``!!python/...`` tags)."""
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        # safe_load refuses tags that would build Python objects; say so instead of a traceback.
        line = f" at line {e.problem_mark.line + 1}" if e.problem_mark is not None else ""
        raise ValueError(f"config file {path}{line}: {e.problem}; only plain YAML values are allowed, no tags "
                         "such as !!python/object") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"config file {path} is not valid YAML{where}: "
                         f"{getattr(e, 'problem', None) or e}") from None


def load_config_file(path: str) -> Dict[str, Any]:
    """Reads a YAML or JSON config; unknown keys are an error that lists the valid ones."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found (or not a file): {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {path} is not UTF-8 text (byte offset {e.start})") from None
    cfg = _parse_config_text(path, text)
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings, got {type(cfg).__name__}")
    bad_keys = [k for k in cfg if not isinstance(k, str)]
    if bad_keys:
        raise ValueError(f"config file {path}: setting names must be strings, got {bad_keys[:3]}")
    cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in {path}; valid keys: {sorted(DEFAULTS)}")
    variants = cfg.get("variants")
    if variants is not None and not isinstance(variants, list):
        raise ValueError(f"variants in {path} must be a list of mappings, got {type(variants).__name__}")
    for i, v in enumerate(variants or []):
        if not isinstance(v, dict) or "name" not in v:
            raise ValueError(f"variants[{i}] in {path} must be a mapping with a name")
        bad = sorted(set(map(str, v)) - VARIANT_KEYS)
        if bad:
            raise ValueError(f"unknown key(s) {bad} in variants[{i}] of {path}; valid keys: {sorted(VARIANT_KEYS)}")
    return cfg


def resolve_settings(args: argparse.Namespace) -> Dict[str, Any]:
    settings = dict(DEFAULTS)
    if args.config:
        settings.update(load_config_file(args.config))
    for k in DEFAULTS:
        v = getattr(args, k, None)
        if v is not None:
            settings[k] = v
    if args.noise_multiplier is not None:
        settings["target_epsilon"] = None
    for k in ("feature_keys", "attacks", "slicing", "slice_feature_keys", "reference_attacks"):
        settings[k] = _split_list(settings[k])
    # Names, numbers and choices are refused here, at the one root every entry (command line, config file,
    # compile-kfp) goes through, before anything is imported from TensorFlow or written.
    validation.check_run_settings(settings)
    bad = [s for s in settings["slicing"] or [] if s not in SLICINGS]
    if bad:
        raise ValueError(f"unknown slicing {bad}; choose from {list(SLICINGS)} (feature slices: --slice-feature-keys)")
    return settings


def build_variants(s: Dict[str, Any], n_members: Optional[int] = None) -> List[VariantSpec]:
    """The variants of resolved settings: the config file's ``variants`` (each a name and recipe fields, the
    top-level settings under them, TrainingRecipe defaults for the rest; a private variant without σ or ε gets
    ε = DEFAULT_TARGET_EPSILON), or the demo's two variants with the settings given on top. ``n_members``: the
    expected training-set size, when known: the default variants' batch sizes follow it (``scaled_defaults``)."""
    top = {k: s[k] for k in RECIPE_KEYS if s.get(k) is not None}
    if s["model"] is not None:
        top["builtin_model"] = s["model"]
    if s["variants"]:
        out = []
        # The DP settings and hparams given at the top level are the demo DP variant's; a listed variant keeps
        # its own (or the recipe's defaults), except ε for a private variant that gives neither σ nor ε.
        shared = {k: v for k, v in top.items() if k not in ("noise_multiplier", "target_epsilon", "hparams")}
        for v in s["variants"]:
            fields = {**shared, **{k: x for k, x in v.items() if k != "name"}}
            if fields.get("private", _RECIPE.private) and fields.get("noise_multiplier") is None \
                    and fields.get("target_epsilon") is None:
                fields["target_epsilon"] = s["target_epsilon"] if s["target_epsilon"] is not None \
                    else DEFAULT_TARGET_EPSILON
            out.append(VariantSpec(name=v["name"], recipe=TrainingRecipe(**fields)))
        return out
    out = []
    for v in default_variants(s["epochs"], n_members):
        # Settings left unset keep each demo variant's own value.
        changes = {k: top[k] for k in ("epochs", "optimizer", "lr_schedule", "sampling", "accountant",
                                       "checkpoint_every",
                                       "module_file", "model_fn", "learning_rate", "builtin_model", "batch_size")
                   if k in top}
        if s["hparams"] is not None:
            changes["hparams"] = s["hparams"]
        elif s["module_file"] or s["model"] is not None:
            changes["hparams"] = {}
        name = v.name
        if v.private:
            changes["delta"] = s["delta"]
            if "learning_rate" not in top and (s["module_file"] or top.get("builtin_model", v.builtin_model)
                                               != "softmax_regression"):
                changes.update({k: x for k, x in DP_DEEP_RECIPE.items() if k not in top})
            if s["l2_norm_clip"] is not None:
                changes["l2_norm_clip"] = s["l2_norm_clip"]
            if s["noise_multiplier"] is not None:
                changes.update(noise_multiplier=s["noise_multiplier"], target_epsilon=None)
                name = f"dp_sigma{s['noise_multiplier']:g}".replace(".", "_")
            elif s["target_epsilon"] is not None:
                changes["target_epsilon"] = s["target_epsilon"]
                name = f"dp_eps{s['target_epsilon']:g}".replace(".", "_")
        out.append(VariantSpec(name=name, recipe=v.recipe.replace(**changes)))
    return out


def build_audit(s: Dict[str, Any], demo: bool = False) -> AuditSpec:
    """The evaluator settings (AuditSpec) from resolved settings; ``demo``: the embedded digits demo, where
    reference models and the one-run audit default to DEMO_REFERENCE_MODELS / DEMO_AUDIT_CANARIES."""
    slicing = {name: True for name in s["slicing"] or []}
    if s["slice_feature_keys"]:
        slicing["feature_keys"] = s["slice_feature_keys"]
    k = s["reference_models"]
    k = (DEMO_REFERENCE_MODELS if demo else 0) if k is None else int(k)
    m = s["audit_canaries"]
    m = (DEMO_AUDIT_CANARIES if demo else 0) if m is None else int(m)
    if k < 0 or k == 1:
        raise ValueError(f"reference_models must be 0 (off) or >= 2, got {k}")
    if m < 0 or m == 1:
        raise ValueError(f"audit_canaries must be 0 (off) or >= 2, got {m}")
    attacks = tuple(s["attacks"])
    from privacy_audit.components.membership_inference.attacks import check_attack_names, reference_attack_names

    with_refs = reference_attack_names(check_attack_names(list(attacks)))
    if with_refs and not k:
        raise ValueError(f"attacks {with_refs} need reference models: add --reference-models K (e.g. 4)")
    extra = {}
    if s["reference_attacks"]:
        bad = [a for a in check_attack_names(s["reference_attacks"]) if a not in reference_attack_names([a])]
        if bad:
            raise ValueError(f"reference_attacks {bad} are not reference attacks (lira, lira_offline, rmia, "
                             "rmia_offline)")
        extra["reference_attacks"] = tuple(s["reference_attacks"])
    extra["members_fraction"] = float(s["members_fraction"])
    return AuditSpec(attacks=attacks, slicing=slicing, min_slice_size=s["min_slice_size"],
                     max_auc=s["max_auc"], max_attacker_advantage=s["max_attacker_advantage"],
                     max_epsilon_lower_bound=s["max_epsilon_lower_bound"], reference_models=k,
                     max_auc_increase=s["max_auc_increase"],
                     reference_init=s["reference_init"], reference_options=s["reference_options"],
                     # Worker processes when K >= 8 (measured 1.3x on 2 cores): the CLI's __main__ is guarded.
                     reference_n_jobs=0, audit_canaries=m, **extra)


class _Progress(logging.Handler):
    """Turns the orchestrator's log lines into short progress lines on stdout."""
    PATTERNS = [(re.compile(r"Component (\S+) is running"), "▶ {0}"),
                (re.compile(r"Component (\S+) is finished"), "✓ {0} ({t:.0f}s)"),
                (re.compile(r"A cached execution (\d+) is used"), "  cached: reusing execution {0}")]

    def __init__(self):
        super().__init__(logging.INFO)
        self.t0 = time.time()
        self.started: Dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a log line we cannot format is not ours
            return
        for pat, fmt in self.PATTERNS:
            m = pat.search(msg)
            if m:
                name = m.group(1)
                if fmt.startswith("▶"):
                    self.started[name] = time.time()
                t = time.time() - self.started.get(name, self.t0)
                print(f"[{time.time() - self.t0:6.0f}s] " + fmt.format(name, t=t), flush=True)


def _install_progress() -> _Progress:
    # Beam's worker processes and TFX's launcher log every step at WARNING (unparseable args, unsupported
    # MLMD predicates...): only errors reach the console, plus our progress lines and our own warnings.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")
    root = logging.getLogger()
    for h in root.handlers:
        h.setLevel(max(h.level, logging.ERROR))
    ours = logging.StreamHandler(sys.stderr)
    ours.setLevel(logging.WARNING)
    for name in ("privacy_audit",):
        logging.getLogger(name).addHandler(ours)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    handler = _Progress()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.INFO)
        absl_logging.get_absl_handler().setLevel(logging.ERROR)
    except Exception:  # noqa: BLE001 - absl is optional for progress
        pass
    return handler


def _exists(uri: str) -> bool:
    from privacy_audit.components.common import io

    return io.exists(uri)


def _copy_report(report_uri: str, output_dir: str) -> None:
    """Copies report.html, summary.json and the plots from the artifact (any scheme, common.io); each file
    replaced atomically, the plots folder as a whole where the store allows it."""
    from privacy_audit.components.common import io

    for name in ("summary.json", "report.html"):
        src = io.join(report_uri, name)
        if io.exists(src):
            io.write_bytes(io.join(output_dir, name), io.read_bytes(src))
    with io.local_staging(io.join(output_dir, "report")) as staging:
        io.copytree(report_uri, staging)


REPORT_TYPE_NAME = "privacy_audit.PrivacyReport"  # privacy_audit.components.privacy_report.component.PrivacyReport


def latest_report_uri(metadata_path: str, pipeline_name: str) -> Optional[str]:
    """URI of the newest PrivacyReport artifact of ``pipeline_name`` in the SQLite ML Metadata store."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(cfg)
    try:
        arts = store.get_artifacts_by_type(REPORT_TYPE_NAME)
    except Exception:  # noqa: BLE001 - no such type yet
        return None
    arts = [a for a in arts if a.state == metadata_store_pb2.Artifact.LIVE and _exists(a.uri)]
    if not arts:
        return None
    return max(arts, key=lambda a: (a.create_time_since_epoch, a.id)).uri


# Rows of the embedded demo data (scikit-learn's digits), known without reading it.
DEMO_ROWS = 1797


@dataclasses.dataclass
class RunPlan:
    """Everything `run` decided before writing anything or importing TensorFlow."""
    settings: Dict[str, Any]
    output_dir: str
    data_root: Optional[str]
    examples_dir: Optional[str]
    label_key: str
    demo: bool
    variants: List[VariantSpec]
    audit: AuditSpec
    n_members: Optional[int] = None
    rows: Optional[int] = None  # the CSV's data rows (all files), counted by validation.check_csv_data


def local_beam_args(s: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """``(pipeline's Beam args, the evaluators' own)`` for a local run. Without a ``--runner``, the DirectRunner
    runs in this process (``direct_num_workers`` 1, the default) or in that many worker processes (multi-
    processing). The evaluators run in this process either way, unless the Beam args choose a running mode:
    their per-example work is vectorised and TensorFlow's threads already use the cores, while each worker
    would load TensorFlow and the models again (measured on 1M examples x 3 models, 2 cores: 37.7 s and
    1.2 GB in this process, 34.3 s and 2.8 GB with 2 workers). TFX's CsvExampleGen, which builds each
    tf.Example in Python, is what more workers speed up (1M rows: 348 s and 2.0 GB in-process, 220 s and
    4.2 GB with 2 workers)."""
    beam_args = list(s["beam_pipeline_args"] or [])
    if any(a.startswith("--runner") for a in beam_args):
        return beam_args, []
    workers = int(s["direct_num_workers"])
    mode = (["--direct_running_mode=in_memory"] if workers == 1 else
            ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"])
    chosen = any(a.startswith("--direct_running_mode") for a in beam_args)
    return mode + beam_args, ([] if chosen else ["--direct_running_mode=in_memory", "--direct_num_workers=1"])


def with_evaluator_args(pipeline, evaluator_args: List[str]):
    """Gives each MembershipInferenceEvaluator of ``pipeline`` its own Beam args (TFX puts a component's after
    the pipeline's, so these win). Returns the pipeline."""
    for component in pipeline.components:
        if evaluator_args and type(component).__name__ == "MembershipInferenceEvaluator":
            component.with_beam_pipeline_args(evaluator_args)
    return pipeline


def variant_lines(variants: List[VariantSpec], n_members: Optional[int]) -> List[str]:
    """One progress line per variant with the training settings it runs with (the defaults included, so that
    a user sees what the data size chose)."""
    size = f"~{n_members:,} training examples" if n_members else "the demo's training examples"
    out = []
    for v in variants:
        dp = (f"DP-{v.optimizer}, C={v.l2_norm_clip:g}, " + (f"ε={v.target_epsilon:g}" if v.target_epsilon is not None
                                                             else f"σ={v.noise_multiplier:g}")) if v.private \
            else "non-private"
        batch = "expected batch" if v.private and v.sampling == "poisson" else "batch"
        lr = f"learning rate {v.learning_rate:g}" + (f" ({v.lr_schedule})" if v.lr_schedule != "constant" else "")
        out.append(f"  {v.name}: {v.builtin_model if not v.module_file else v.module_file}, {dp}, {batch} "
                   f"{v.batch_size}, {lr}, {v.epochs} epochs, checkpoint every "
                   f"{v.checkpoint_every} (for {size})")
    return out


def plan_run(args: argparse.Namespace) -> RunPlan:
    """Checks every setting and the data (see :mod:`validation`); raises ValueError/FileNotFoundError naming
    the problem. Writes nothing and imports no TensorFlow/TFX, so a bad argument fails in about a second."""
    s = resolve_settings(args)
    output_dir = validation.check_output_dir(args.output_dir)
    if s["data"] and s["examples"]:
        raise ValueError("give --data or --examples, not both")
    data_root, examples_dir = s["data"], s["examples"]
    demo = not data_root and not examples_dir
    for p in (data_root, examples_dir):
        if p and not os.path.isdir(p):
            raise FileNotFoundError(f"input directory not found: {p}")
    label_key = s["label_key"] or ("label" if demo else None)
    if not label_key:
        raise ValueError("--label-key is required with your own data")
    rows = DEMO_ROWS if demo else validation.check_csv_data(data_root, label_key)["rows"] if data_root else None
    n_members = None if rows is None or demo else int(rows * float(s["members_fraction"]))
    variants = build_variants(s, n_members)
    if rows is not None:
        _check_data_size(variants, rows, float(s["members_fraction"]), user_batch=s["batch_size"] is not None)
    return RunPlan(s, output_dir, data_root, examples_dir, label_key, demo, variants, build_audit(s, demo=demo),
                   n_members, rows)


def _check_data_size(variants: List[VariantSpec], rows: int, fraction: float, user_batch: bool) -> None:
    """Refuses batch sizes and δ the members split cannot hold. The split is by hash, so its size N is only
    known after ExampleGen: a setting is refused here when it fails even for N three standard deviations
    above rows · members_fraction (the trainer checks the exact N again)."""
    expected = rows * fraction
    n_high = int(expected + 3 * math.sqrt(rows * fraction * (1 - fraction))) + 1
    for v in sorted(variants, key=lambda v: -v.batch_size):  # the largest batch sets the minimum
        if v.batch_size > n_high:
            need = math.ceil(v.batch_size / fraction)
            whose = "your batch size" if user_batch else f"variant {v.name!r}'s default batch size"
            raise ValueError(f"the data set is too small: {rows} rows give about {expected:.0f} members "
                             f"(members_fraction {fraction:g}), fewer than {whose} {v.batch_size}; give "
                             f"--batch-size {max(1, int(expected))} or less, or at least {need} rows")
        if v.private and v.delta is not None and v.delta >= 1.0 / n_high:
            raise ValueError(f"delta={v.delta:g} of variant {v.name!r} is not below 1/N for the ~{expected:.0f} "
                             f"members: (ε, δ)-DP with δ >= 1/N allows releasing about one training example "
                             f"outright; leave delta unset (default: the largest power of ten not above "
                             f"1/N^1.1) or give a smaller one")


def _descendants() -> List[int]:
    """Process ids of every process started below this one (Beam's SDK workers and their children)."""
    try:
        import psutil

        return [p.pid for p in psutil.Process().children(recursive=True)]
    except Exception:  # noqa: BLE001 - psutil missing or a process gone: fall back to /proc
        parents: Dict[int, int] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        out, frontier = [], [os.getpid()]
        while frontier:
            kids = [pid for pid, ppid in parents.items() if ppid in frontier]
            out += kids
            frontier = kids
        return out


def _stop_descendants(grace: float = 5.0) -> int:
    """SIGTERM to every descendant, then SIGKILL to those alive after ``grace`` seconds; returns how many."""
    pids = _descendants()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + (grace if sig == signal.SIGTERM else 0)
        while time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
    return len(pids)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap our own children so they do not linger as zombies
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _on_stop_signal(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    """SIGTERM / SIGINT during a run: stop Beam's worker processes, say so on one line, exit 128 + signal.
    TFX's cache in ML Metadata lets the same command resume where the run stopped."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Beam's threads that talk to the workers print tracebacks as the workers die: silence them (fd 2 to
    # /dev/null) and keep a copy of stderr for our one line.
    sys.stderr.flush()
    stderr = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    n = _stop_descendants()
    os.write(stderr, f"privacy-audit run: stopped by {signal.Signals(signum).name}; ended {n} worker process(es); "
                     "run the same command again to resume from the finished components\n".encode())
    os._exit(128 + signum)


def _write_demo_data(output_dir: str) -> str:
    from privacy_audit.components.common.examples import write_digits_csv

    data_root = os.path.join(output_dir, "data", "digits")
    # Written once: rewriting would change the file's fingerprint and defeat TFX's cache.
    if not os.path.exists(os.path.join(data_root, "digits.csv")):
        write_digits_csv(data_root, seed=0)
    print(f"No data given: using the embedded digits data (scikit-learn, 1797 8x8 images) at {data_root}")
    return data_root


def main_run(args: argparse.Namespace) -> int:
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _main_run(args)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main_run(args: argparse.Namespace) -> int:
    plan = plan_run(args)
    s, output_dir = plan.settings, plan.output_dir
    from privacy_audit.components.common import io

    remote = io.is_remote(output_dir)
    pipeline_root = s["pipeline_root"] or io.join(output_dir, "pipeline_root")
    # ML Metadata is SQLite: it stays on this machine even when the artifacts go to a bucket.
    metadata_path = os.path.abspath(s["metadata_path"] or (
        os.path.join("privacy_audit_local", "metadata.sqlite") if remote else os.path.join(output_dir, "metadata.sqlite")))
    for uri in dict.fromkeys([output_dir, pipeline_root, s["history_uri"]]):
        if uri and io.is_remote(uri):
            io.check_writable(uri)  # a missing or unreachable bucket fails here, before any training
    created = not os.path.exists(output_dir)
    io.makedirs(output_dir)
    try:
        data_root = _write_demo_data(os.path.dirname(metadata_path) if remote else output_dir) if plan.demo \
            else plan.data_root
    except BaseException:
        if created and not remote:  # nothing of value in it yet: leave no empty output directory behind
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    beam_args, evaluator_args = local_beam_args(s)

    from privacy_audit.pipelines.pipeline import create_pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    os.makedirs(os.path.dirname(metadata_path), exist_ok=True)
    pipeline = create_pipeline(
        pipeline_root=pipeline_root, history_uri=s["history_uri"], label_key=plan.label_key, data_root=data_root,
        examples_dir=plan.examples_dir, variants=plan.variants, audit=plan.audit, pipeline_name=s["pipeline_name"],
        metadata_path=metadata_path, feature_keys=s["feature_keys"], seed=int(s["seed"]),
        beam_pipeline_args=beam_args, enable_cache=bool(s["cache"]), report_title=s["title"],
        expected_examples=plan.rows)
    with_evaluator_args(pipeline, evaluator_args)
    print(f"Running pipeline {s['pipeline_name']!r}: {len(pipeline.components)} components, variants "
          f"{[v.name for v in plan.variants]}; ML Metadata at {metadata_path}", flush=True)
    for line in variant_lines(plan.variants, plan.n_members):
        print(line, flush=True)
    t0 = time.time()
    handler = _install_progress()
    try:
        LocalDagRunner().run(pipeline)
    finally:
        logging.getLogger().removeHandler(handler)
    uri = latest_report_uri(metadata_path, s["pipeline_name"])
    if uri is None:
        raise RuntimeError("the pipeline finished but no PrivacyReport artifact was found in ML Metadata")
    _copy_report(uri, output_dir)
    summary = io.read_json(io.join(output_dir, "summary.json"))
    from privacy_audit.components.privacy_report.summary import text_summary

    print(text_summary(summary))
    print(f"Done in {time.time() - t0:.0f}s. Report: {io.join(output_dir, 'report.html')}  "
          f"Summary: {io.join(output_dir, 'summary.json')}")
    return 0
