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
import os
import re
import shutil
import sys
import time
from typing import Any, Dict, List, Optional

from privacy_audit.pipelines.pipeline import DEFAULT_PIPELINE_NAME, AuditSpec, VariantSpec, default_variants

# Every key a config file may hold, with its default. Variant-level keys apply to every variant unless
# `variants` lists them one by one.
DEFAULTS: Dict[str, Any] = {
    "data": None,                # directory of CSV files or GZIP TFRecords of tf.Example
    "examples": None,            # an existing TFX Examples artifact directory (Split-train/, Split-eval/)
    "label_key": None,           # default "label" for the embedded data
    "feature_keys": None,
    "module_file": None,
    "model_fn": "build_keras_model",
    "model": None,               # built-in model when no module_file: auto, cnn, mlp, softmax_regression
                                 # (default: each demo variant's own: the non-private MLP
                                 # 64-512-512-10, the DP variant's softmax regression)
    "epochs": 40,
    "batch_size": None,          # default: 16 non-private, 64 DP
    "learning_rate": None,       # default: 1e-3 non-private, 5e-3 DP
    "members_fraction": 0.5,     # share of the data that trains the models (members); the rest are non-members
    "optimizer": "adam",
    "l2_norm_clip": None,        # default: the demo DP variant's own; 1.0 in variants you define
    "noise_multiplier": None,
    "target_epsilon": None,      # default: the demo DP variant's own; 3.0 in variants you define
    "delta": None,
    "sampling": "poisson",
    "accountant": "rdp",
    "checkpoint_every": 2,
    "hparams": None,
    "variants": None,            # list of {name, private, ...VariantSpec fields}
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
    "seed": 0,
    "pipeline_name": DEFAULT_PIPELINE_NAME,
    "title": "Privacy audit",
    "beam_pipeline_args": None,
    "direct_num_workers": 2,
    "cache": True,
}
# DP settings of the variants a config file defines without them.
DEFAULT_L2_NORM_CLIP = 1.0
DEFAULT_TARGET_EPSILON = 3.0
VARIANT_KEYS = {f.name for f in dataclasses.fields(VariantSpec)}
# Measured on 2 cores (see the project notes): the demo with both stays well under 10 minutes.
DEMO_REFERENCE_MODELS = 4
DEMO_AUDIT_CANARIES = 0
SLICINGS = ("entire_dataset", "by_class", "by_percentiles", "by_classification_correctness")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="privacy_audit_output", help="where everything goes (default: %(default)s)")
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
    p.add_argument("--l2-norm-clip", type=float,
                   help="per-example gradient clip norm C (default: the demo DP variant's, 4; 1.0 in variants you define)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--noise-multiplier", type=float, help="σ of the DP variant")
    g.add_argument("--target-epsilon", type=float,
                   help="ε of the DP variant (default: the demo's, 1; 3 in variants you define); σ is calibrated")
    p.add_argument("--delta", type=float, help="δ (default: 1/N rounded down to a power of ten)")
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
    p.add_argument("--direct-num-workers", type=int, help="Beam DirectRunner worker processes (default 2)")
    p.add_argument("--beam-pipeline-arg", action="append", dest="beam_pipeline_args",
                   help="extra Beam argument, repeatable (e.g. --beam-pipeline-arg=--runner=FlinkRunner)")
    p.add_argument("--no-cache", dest="cache", action="store_const", const=False,
                   help="rerun every component even when its inputs are unchanged")


def _split_list(v):
    if v is None or isinstance(v, list):
        return v
    return [s.strip() for s in str(v).split(",") if s.strip()]


def load_config_file(path: str) -> Dict[str, Any]:
    """Reads a YAML or JSON config; unknown keys are an error that lists the valid ones."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        cfg = json.loads(text)
    else:
        import yaml

        cfg = yaml.safe_load(text)
    cfg = cfg or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings, got {type(cfg).__name__}")
    cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in {path}; valid keys: {sorted(DEFAULTS)}")
    for i, v in enumerate(cfg.get("variants") or []):
        if not isinstance(v, dict) or "name" not in v:
            raise ValueError(f"variants[{i}] in {path} must be a mapping with a name")
        bad = sorted(set(v) - VARIANT_KEYS)
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
    bad = [s for s in settings["slicing"] or [] if s not in SLICINGS]
    if bad:
        raise ValueError(f"unknown slicing {bad}; choose from {list(SLICINGS)} (feature slices: --slice-feature-keys)")
    return settings


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def build_variants(s: Dict[str, Any]) -> List[VariantSpec]:
    common = dict(epochs=s["epochs"], optimizer=s["optimizer"], sampling=s["sampling"],
                  accountant=s["accountant"], checkpoint_every=s["checkpoint_every"],
                  module_file=s["module_file"], model_fn=s["model_fn"])
    # Settings left unset keep each variant's own default.
    if s["learning_rate"] is not None:
        common["learning_rate"] = s["learning_rate"]
    if s["model"] is not None:
        common["builtin_model"] = s["model"]
    if s["variants"]:
        out = []
        for v in s["variants"]:
            spec = {**common, "l2_norm_clip": _or(s["l2_norm_clip"], DEFAULT_L2_NORM_CLIP), "delta": s["delta"], **v}
            if spec.get("private", True) and spec.get("noise_multiplier") is None and spec.get("target_epsilon") is None:
                spec["target_epsilon"] = _or(s["target_epsilon"], DEFAULT_TARGET_EPSILON)
            spec.setdefault("batch_size", s["batch_size"] or 64)
            out.append(VariantSpec(**spec))
        return out
    out = []
    for v in default_variants(s["epochs"]):
        spec = dataclasses.asdict(v)
        spec.update(common)
        if s["hparams"] is not None:
            spec["hparams"] = s["hparams"]
        elif s["module_file"] or s["model"] is not None:
            spec["hparams"] = {}
        if s["batch_size"]:
            spec["batch_size"] = s["batch_size"]
        if v.private:
            spec["delta"] = s["delta"]
            if s["l2_norm_clip"] is not None:
                spec["l2_norm_clip"] = s["l2_norm_clip"]
            if s["noise_multiplier"] is not None:
                spec.update(noise_multiplier=s["noise_multiplier"], target_epsilon=None,
                            name=f"dp_sigma{s['noise_multiplier']:g}".replace(".", "_"))
            elif s["target_epsilon"] is not None:
                spec.update(target_epsilon=s["target_epsilon"],
                            name=f"dp_eps{s['target_epsilon']:g}".replace(".", "_"))
        out.append(VariantSpec(**spec))
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
                     reference_init=s["reference_init"], reference_options=s["reference_options"],
                     # Worker processes when K >= 8 (measured 1.3x on 2 cores): the CLI's __main__ is guarded.
                     reference_n_jobs=0, audit_canaries=m, **extra)


def _check_output_dir(path: str) -> str:
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"output directory {path} exists and is a file")
    os.makedirs(path, exist_ok=True)
    return path


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


def _copy_report(report_uri: str, output_dir: str) -> None:
    """Copies report.html, summary.json and the plots from the artifact; each file replaced atomically."""
    for name in ("report.html", "summary.json"):
        src = os.path.join(report_uri, name)
        if os.path.exists(src):
            tmp = os.path.join(output_dir, f".{name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, os.path.join(output_dir, name))
    plots = os.path.join(output_dir, "report")
    tmpdir = plots + ".tmp"
    shutil.rmtree(tmpdir, ignore_errors=True)
    shutil.copytree(report_uri, tmpdir)
    old = plots + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(plots):
        os.replace(plots, old)
    os.replace(tmpdir, plots)
    shutil.rmtree(old, ignore_errors=True)


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
    arts = [a for a in arts if a.state == metadata_store_pb2.Artifact.LIVE and os.path.exists(a.uri)]
    if not arts:
        return None
    return max(arts, key=lambda a: (a.create_time_since_epoch, a.id)).uri


def main_run(args: argparse.Namespace) -> int:
    s = resolve_settings(args)
    output_dir = _check_output_dir(args.output_dir)
    if s["data"] and s["examples"]:
        raise ValueError("give --data or --examples, not both")
    label_key = s["label_key"]
    data_root, examples_dir = s["data"], s["examples"]
    demo = not data_root and not examples_dir
    for p in (data_root, examples_dir):
        if p and not os.path.isdir(p):
            raise FileNotFoundError(f"input directory not found: {p}")
    if not data_root and not examples_dir:
        from privacy_audit.components.common.examples import DIGITS_LABEL_KEY, write_digits_csv

        data_root = os.path.join(output_dir, "data", "digits")
        # Written once: rewriting would change the file's fingerprint and defeat TFX's cache.
        if not os.path.exists(os.path.join(data_root, "digits.csv")):
            write_digits_csv(data_root, seed=0)
        label_key = label_key or DIGITS_LABEL_KEY
        print(f"No data given: using the embedded digits data (scikit-learn, 1797 8x8 images) at {data_root}")
    if not label_key:
        raise ValueError("--label-key is required with your own data")
    if data_root:
        _check_csv_label(data_root, label_key)
    variants = build_variants(s)
    audit = build_audit(s, demo=demo)
    beam_args = list(s["beam_pipeline_args"] or [])
    if not any(a.startswith("--runner") for a in beam_args):
        beam_args = [f"--direct_running_mode=multi_processing",
                     f"--direct_num_workers={int(s['direct_num_workers'])}"] + beam_args

    from privacy_audit.pipelines.pipeline import create_pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    metadata_path = os.path.join(output_dir, "metadata.sqlite")
    pipeline = create_pipeline(
        pipeline_root=os.path.join(output_dir, "pipeline_root"), label_key=label_key, data_root=data_root,
        examples_dir=examples_dir, variants=variants, audit=audit, pipeline_name=s["pipeline_name"],
        metadata_path=metadata_path, feature_keys=s["feature_keys"], seed=int(s["seed"]),
        beam_pipeline_args=beam_args, enable_cache=bool(s["cache"]), report_title=s["title"])
    print(f"Running pipeline {s['pipeline_name']!r}: {len(pipeline.components)} components, variants "
          f"{[v.name for v in variants]}; ML Metadata at {metadata_path}", flush=True)
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
    with open(os.path.join(output_dir, "summary.json")) as f:
        summary = json.load(f)
    from privacy_audit.components.privacy_report.summary import text_summary

    print(text_summary(summary))
    print(f"Done in {time.time() - t0:.0f}s. Report: {os.path.join(output_dir, 'report.html')}  "
          f"Summary: {os.path.join(output_dir, 'summary.json')}")
    return 0


def _check_csv_label(data_root: str, label_key: str) -> None:
    """Fails early, before any component runs, when a CSV lacks the label column."""
    import csv

    csvs = sorted(f for f in os.listdir(data_root) if f.endswith(".csv"))
    if not csvs and not [f for f in os.listdir(data_root) if ".tfrecord" in f]:
        raise ValueError(f"no CSV or TFRecord files in {data_root}")
    for name in csvs:
        with open(os.path.join(data_root, name), newline="") as f:
            header = next(csv.reader(f), None)
        if not header:
            raise ValueError(f"{os.path.join(data_root, name)} is empty")
        if label_key not in header:
            raise ValueError(f"{os.path.join(data_root, name)} has no label column {label_key!r} "
                             f"(columns: {header[:10]}{'...' if len(header) > 10 else ''})")
