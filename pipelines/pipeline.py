"""The audit pipeline: ExampleGen → DPTrainer per variant (→ ReferenceModelTrainer per variant, when reference
models are asked for) → MembershipInferenceEvaluator per variant → PrivacyReportGenerator. The same
definition runs locally (LocalDagRunner) and on Kubeflow Pipelines."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from privacy_audit.components.common.recipe import RUNTIME_OVERRIDES, TrainingRecipe, as_recipe

DEFAULT_PIPELINE_NAME = "privacy-audit"


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """One model variant: its name and its training recipe (a DPTrainer and its evaluator).

    ``recipe.private=False`` is the non-private baseline. ``runtime_parameters``: recipe fields a Kubeflow run
    may change ({"epochs": RuntimeParameter, "target_epsilon": RuntimeParameter}; see
    kubeflow.with_runtime_parameters), whose defaults are the recipe's values. The recipe's fields read as the
    variant's own (``variant.epochs`` is ``variant.recipe.epochs``).
    """
    name: str
    recipe: TrainingRecipe = dataclasses.field(default_factory=TrainingRecipe)
    runtime_parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # The name becomes component ids and folders under the pipeline root: refused here, where every entry
        # (config file, command line, Python) passes, when it could leave them (issue 15).
        from privacy_audit.pipelines.validation import check_path_name

        check_path_name("variant name", self.name)
        if not isinstance(self.recipe, TrainingRecipe):
            object.__setattr__(self, "recipe", as_recipe(self.recipe))
        unknown = sorted(set(self.runtime_parameters) - set(RUNTIME_OVERRIDES))
        if unknown:
            raise ValueError(f"runtime_parameters {unknown} cannot be run-time parameters; only {RUNTIME_OVERRIDES}")

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not VariantSpec fields: the recipe's fields, read-only.
        if name != "recipe" and name in TrainingRecipe.field_names():
            return getattr(self.recipe, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def of(cls, name: str, **recipe_fields: Any) -> "VariantSpec":
        """``VariantSpec.of("dp", epochs=10, target_epsilon=2.0)``: a variant from recipe fields (the others keep
        the TrainingRecipe defaults)."""
        return cls(name=name, recipe=TrainingRecipe(**recipe_fields))


#: The demo's training-set size (members of the embedded digits): the default variants' settings below are
#: tuned for it and scale with the data from there (:func:`scaled_defaults`).
DEMO_MEMBERS = 898
#: DP-Adam settings of the default DP variant when its model is not the linear softmax regression (mlp, cnn,
#: a module file's): a constant 2e-2 makes Adam's noise-driven steps grow the loss of a multi-layer model once
#: it fits (measured: 3.2 -> 6.5 on 100k tabular rows); 1e-2 decaying to 0 along a cosine keeps it falling
#: there and on digits (README, "Choosing DP settings").
DP_DEEP_RECIPE = {"learning_rate": 1e-2, "lr_schedule": "cosine"}


def _pow2(x: float) -> int:
    return 2 ** max(0, round(math.log2(max(x, 1.0))))


def scaled_defaults(n_members: Optional[int]) -> Dict[str, Dict[str, int]]:
    """Batch sizes of the two default variants for a training set of ``n_members`` examples (None: unknown,
    the demo's). Non-private: 16 on the demo, the power of two nearest N/400 between 16 and 256 (128 at 50,000
    examples: fewer, larger steps once the data is large). DP: the expected batch q·N = the power of two
    nearest N/100 between 128 and 4096 (1024 at ~100,000 examples, 4096 from ~400,000: the noise on the mean
    gradient falls as 1/B, so a larger batch buys accuracy at the same ε, and q = B/N stays small; measured on
    500,000 tabular examples, DP-Adam's loss rose in the second epoch at 1024 and fell every epoch at 4096)."""
    n = DEMO_MEMBERS if n_members is None else max(1, int(n_members))
    return {"non_private": {"batch_size": int(min(256, max(16, _pow2(n / 400))))},
            "dp": {"batch_size": int(min(4096, max(128, _pow2(n / 100))))}}


def default_variants(epochs: int = 40, n_members: Optional[int] = None) -> List[VariantSpec]:
    """The demo: a model trained without privacy, and one trained with DP-Adam at ε = 1.

    The non-private variant is a wide MLP (64-512-512-10): on a few hundred digits it memorises its
    training set the way the codelab's CIFAR-10 CNNs do, so that the report has leakage to show (a CNN
    generalises so well on digits that its members and non-members are hard to tell apart even without DP).
    The DP variant is a linear softmax model with C = 4, above most per-example gradient norms once the model
    fits. Measured with 4 reference models (README, "What DP promises on small data"): the wide MLP with
    DP-Adam still leaks AUC 0.54-0.58 to offline LiRA and RMIA at ε = 1, 2 and 3 alike, and so does the
    linear model at ε = 3 on a quarter of digits (0.53-0.57); the linear model at ε = 1 on half of digits
    keeps the attacks at 0.50-0.54 on three seeds in four (0.556 on the fourth) at test accuracy 0.83-0.90.

    ``n_members``: the training set's size when known; the batch sizes follow it (:func:`scaled_defaults`).
    """
    sizes = scaled_defaults(n_members)
    return [
        VariantSpec.of("non_private", private=False, epochs=epochs, learning_rate=1e-3,
                       builtin_model="mlp", hparams={"hidden_units": [512, 512]}, **sizes["non_private"]),
        VariantSpec.of("dp_eps1", private=True, epochs=epochs, learning_rate=2e-2,
                       l2_norm_clip=4.0, target_epsilon=1.0, builtin_model="softmax_regression", **sizes["dp"]),
    ]


#: Attacks the evaluator adds when reference models are trained (LiRA online and offline, RMIA online).
DEFAULT_REFERENCE_ATTACKS = ("lira", "lira_offline", "rmia")


@dataclasses.dataclass
class AuditSpec:
    """The evaluator's settings, shared by all variants.

    ``reference_models``: K > 0 adds one ReferenceModelTrainer per variant (K models with the variant's
    recipe on halves of the members and non-members) and the ``reference_attacks`` to its evaluator;
    ``reference_init``: "target" or "independent" (see ReferenceModelTrainer). ``audit_canaries``: m > 0 runs
    the one-run privacy audit with m canaries in every private variant's DPTrainer.
    """
    attacks: Sequence[str] = ("threshold", "logistic_regression")
    slicing: Dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"entire_dataset": True, "by_class": True})
    members_split: str = "train"
    nonmembers_split: str = "eval"
    # Share of the data that trains the models (members); the rest is held out (non-members).
    members_fraction: float = 0.5
    min_slice_size: int = 20
    max_auc: Optional[float] = None
    max_attacker_advantage: Optional[float] = None
    max_epsilon_lower_bound: Optional[float] = None
    # Drift gate of the report: refuse the blessing when the max AUC rose by more than this since the last run.
    max_auc_increase: Optional[float] = None
    reference_models: int = 0
    reference_attacks: Sequence[str] = DEFAULT_REFERENCE_ATTACKS
    reference_init: str = "target"
    reference_options: Optional[Dict[str, Any]] = None
    # Worker processes per ReferenceModelTrainer: 1 in-process, 0 automatic (needs a guarded __main__).
    reference_n_jobs: int = 1
    audit_canaries: int = 0

    def evaluator_attacks(self) -> List[str]:
        """The attacks, plus the reference attacks when reference models are trained."""
        attacks = list(self.attacks)
        if self.reference_models:
            attacks += [a for a in self.reference_attacks if a not in attacks]
        return attacks


def _split_buckets(members_fraction: float):
    """Hash buckets (members, non-members) giving ``members_fraction`` of the examples to the members."""
    if not 0 < members_fraction < 1:
        raise ValueError(f"members_fraction must be in (0, 1), got {members_fraction}")
    m = int(round(members_fraction * 100))
    return max(1, min(99, m)), 100 - max(1, min(99, m))


def _variant_components(v: VariantSpec, examples, audit: AuditSpec, *, seed: int, label_key: str,
                        feature_keys: Optional[List[str]], expected_examples: Optional[int] = None):
    """``(DPTrainer, ReferenceModelTrainer or None, MembershipInferenceEvaluator)`` of one model variant."""
    from privacy_audit.components.dp_trainer.component import DPTrainer
    from privacy_audit.components.membership_inference.component import MembershipInferenceEvaluator
    from privacy_audit.components.reference_models.component import ReferenceModelTrainer

    # The pipeline's seed and one-run audit apply to every variant (the audit to private ones only).
    recipe = v.recipe.replace(seed=seed, audit_canaries=audit.audit_canaries if v.recipe.private else 0)
    trainer = DPTrainer(
        examples=examples, label_key=label_key, model_variant=v.name, recipe=recipe,
        train_split=audit.members_split, feature_keys=feature_keys, expected_examples=expected_examples,
        **dict(v.runtime_parameters),
    ).with_id(f"DPTrainer.{v.name}")
    references = None
    if audit.reference_models:
        # Depends on the Examples and the recipe only: cached across runs that retrain the same recipe.
        references = ReferenceModelTrainer.for_trainer(
            trainer, examples, k=audit.reference_models, seed=seed, init=audit.reference_init,
            n_jobs=audit.reference_n_jobs, nonmembers_split=audit.nonmembers_split,
        ).with_id(f"ReferenceModelTrainer.{v.name}")
    evaluator = MembershipInferenceEvaluator(
        examples=examples, model=trainer.outputs["model"], model_run=trainer.outputs["model_run"],
        reference_models=references.outputs["reference_models"] if references is not None else None,
        label_key=label_key, feature_keys=feature_keys, members_split=audit.members_split,
        nonmembers_split=audit.nonmembers_split, attacks=audit.evaluator_attacks(),
        slicing=dict(audit.slicing), seed=seed, min_slice_size=audit.min_slice_size, max_auc=audit.max_auc,
        max_attacker_advantage=audit.max_attacker_advantage,
        max_epsilon_lower_bound=audit.max_epsilon_lower_bound, model_variant=v.name,
        reference_options=audit.reference_options if references is not None else None,
    ).with_id(f"MembershipInferenceEvaluator.{v.name}")
    return trainer, references, evaluator


def _example_gen(data_root: Optional[str], examples_dir: Optional[str], members_split: str,
                 nonmembers_split: str, members_fraction: float = 0.5):
    members_fraction_buckets = _split_buckets(members_fraction)
    from tfx.proto import example_gen_pb2
    from tfx.v1.components import CsvExampleGen, ImportExampleGen
    from tfx.v1.dsl import Importer
    from tfx.types import standard_artifacts

    if examples_dir:
        # An existing TFX Examples artifact (Split-<name>/ of GZIP TFRecords): imported as it is.
        splits = sorted(d[len("Split-"):] for d in os.listdir(examples_dir) if d.startswith("Split-"))
        return Importer(source_uri=examples_dir, artifact_type=standard_artifacts.Examples,
                        properties={"split_names": json.dumps(splits)}, reimport=False).with_id("ExamplesImporter")
    output_config = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name=members_split, hash_buckets=members_fraction_buckets[0]),
        example_gen_pb2.SplitConfig.Split(name=nonmembers_split, hash_buckets=members_fraction_buckets[1]),
    ]))
    # A Kubeflow run-time data root (RuntimeParameter) picks the ExampleGen by its default: runs given another
    # data root must hold the same format (CSV, or GZIP TFRecords).
    from privacy_audit.components.common.runtime_values import compile_time_value

    local_root = compile_time_value(data_root)
    tfrecords = [f for f in os.listdir(local_root) if ".tfrecord" in f] if os.path.isdir(local_root) else []
    if tfrecords:
        return ImportExampleGen(input_base=data_root, output_config=output_config)
    return CsvExampleGen(input_base=data_root, output_config=output_config)


def _default_history_uri(pipeline_root: str) -> str:
    from privacy_audit.components.privacy_report.history import default_history_uri

    return default_history_uri(pipeline_root)


def create_pipeline(*, pipeline_root: str, label_key: str, data_root: Optional[str] = None,
                    examples_dir: Optional[str] = None, variants: Optional[Sequence[VariantSpec]] = None,
                    audit: Optional[AuditSpec] = None, pipeline_name: str = DEFAULT_PIPELINE_NAME,
                    metadata_path: Optional[str] = None, feature_keys: Optional[List[str]] = None,
                    seed: int = 0, beam_pipeline_args: Optional[List[str]] = None, enable_cache: bool = True,
                    report_title: str = "Privacy audit", for_kubeflow: bool = False,
                    history_uri: Optional[str] = None, expected_examples: Optional[int] = None):
    """Builds the TFX pipeline.

    Args:
      pipeline_root: where artifacts go (local dir, or gs://... on Kubeflow).
      label_key: the label feature of the examples.
      data_root: a directory of CSV files (CsvExampleGen) or of GZIP TFRecords of tf.Example
        (ImportExampleGen); split by hash into members (``audit.members_split``) and non-members, 1:1.
      examples_dir: instead of data_root, an existing TFX Examples artifact directory (Split-<name>/).
      variants: the model variants, each a name and a TrainingRecipe (default: :func:`default_variants`). The
        pipeline's ``seed`` and ``audit.audit_canaries`` (private variants) are set on every recipe.
      audit: evaluator settings (attacks, slicing, privacy gate, reference models, one-run audit).
      metadata_path: SQLite file for ML Metadata (local runs); None on Kubeflow. Always a local file, also
        when pipeline_root is a bucket.
      history_uri: the audit history the report reads its trend from and adds each run to (default:
        ``<pipeline_root>/audit_history``, shared by every run of the pipeline, also scheduled ones).
      beam_pipeline_args: e.g. ["--direct_running_mode=multi_processing", "--direct_num_workers=2"] locally,
        or a Dataflow/Flink/Spark runner's arguments.
      expected_examples: the source data's row count, when known (``privacy-audit run`` counts a CSV's rows):
        each DPTrainer refuses Examples whose splits hold another number, before training.

    On Kubeflow, data_root, the variants' ``epochs`` and ``target_epsilon`` (``VariantSpec.runtime_parameters``,
    run-time overrides of the recipe) and the audit's gate thresholds may be TFX RuntimeParameters (run-time
    pipeline parameters; see kubeflow.with_runtime_parameters).
    """
    from tfx.v1 import dsl
    from tfx.orchestration import metadata

    from privacy_audit.components.privacy_report.component import PrivacyReportGenerator
    from privacy_audit.pipelines.validation import check_path_name

    check_path_name("pipeline_name", pipeline_name)
    if bool(data_root) == bool(examples_dir):
        raise ValueError("give exactly one of data_root (CSV/TFRecord files) or examples_dir (TFX Examples)")
    variants = list(variants or default_variants())
    if not variants:
        raise ValueError("at least one model variant is needed")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    audit = audit or AuditSpec()
    if audit.reference_models < 0 or audit.reference_models == 1:
        raise ValueError(f"reference_models must be 0 (off) or a number of models >= 2, got {audit.reference_models}")

    example_gen = _example_gen(data_root, examples_dir, audit.members_split, audit.nonmembers_split,
                               audit.members_fraction)
    examples = example_gen.outputs["examples"] if "examples" in example_gen.outputs else \
        example_gen.outputs["result"]
    components = [example_gen]
    results, ledgers, blessings = [], [], []
    for v in variants:
        trio = _variant_components(v, examples, audit, seed=seed, label_key=label_key, feature_keys=feature_keys,
                                   expected_examples=expected_examples)
        components.extend(c for c in trio if c is not None)
        trainer, _, evaluator = trio
        results.append(evaluator.outputs["attack_results"])
        ledgers.append(trainer.outputs["model_run"])
        blessings.append(evaluator.outputs["blessing"])
    report = PrivacyReportGenerator(
        attack_results=results, ledgers=ledgers, blessings=blessings, title=report_title,
        pipeline_name_for_trend=pipeline_name,
        metadata_sqlite_path=None if for_kubeflow else metadata_path,
        history_uri=history_uri or (_default_history_uri(pipeline_root) if isinstance(pipeline_root, str) else None),
        max_auc_increase=audit.max_auc_increase)
    components.append(report)

    return dsl.Pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root, components=components,
        enable_cache=enable_cache,
        metadata_connection_config=(metadata.sqlite_metadata_connection_config(metadata_path)
                                    if metadata_path else None),
        beam_pipeline_args=list(beam_pipeline_args or []))
