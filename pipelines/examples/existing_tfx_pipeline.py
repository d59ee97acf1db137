"""A TFX pipeline a team already runs, with a privacy audit added before the Pusher:

    CsvExampleGen → StatisticsGen → SchemaGen → Transform → Trainer (user module, standard TFX Trainer)
        → Evaluator (TFMA: accuracy gate) → MembershipInferenceEvaluator (privacy gate, TFMA's blessing ANDed in)
        → Pusher (pushes only a model blessed for utility AND privacy)

The lines the audit adds are in :func:`add_privacy_audit`; everything else is the team's pipeline as it was.
The data is scikit-learn's digits as CSV (64 numeric pixels, a string ``writer`` feature, the ``label``);
the user module is ``existing_tfx_trainer_module.py`` beside this file.

Run locally (LocalDagRunner, ML Metadata in SQLite):

    .venv/bin/python pipelines/examples/existing_tfx_pipeline.py --output-dir /tmp/existing_tfx
    .venv/bin/python pipelines/examples/existing_tfx_pipeline.py --output-dir /tmp/existing_tfx --kfp-output p.yaml

(the second compiles the same pipeline for Kubeflow Pipelines v2 instead of running it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

MODULE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "existing_tfx_trainer_module.py")
LABEL_KEY = "label"
WRITERS = ("alice", "bob", "carol", "dave")


def write_data(out_dir: str, n: Optional[int] = None, seed: int = 0) -> str:
    """Writes digits as ``out_dir/digits.csv``: pixel_00..pixel_63 in [0, 1], ``writer`` (a seeded random
    string among :data:`WRITERS`), ``label``. ``n``: a seeded random subset of that many rows. Written to a
    temporary name and moved into place; returns the path."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.target))[: n or len(data.target)]
    writers = rng.integers(0, len(WRITERS), size=len(data.target))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "digits.csv")
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"pixel_{i:02d}" for i in range(64)] + ["writer", LABEL_KEY])
        for i in order:
            w.writerow([f"{v / 16.0:.4f}" for v in data.data[i]] + [WRITERS[writers[i]], int(data.target[i])])
    os.replace(path + ".tmp", path)
    return path


def team_components(data_root: str, *, module_file: str = MODULE_FILE, min_accuracy: float = 0.8,
                    custom_config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The team's existing pipeline up to its Evaluator: ``{name: component}`` in run order."""
    import tensorflow_model_analysis as tfma
    from tfx import v1 as tfx

    output_config = tfx.proto.Output(split_config=tfx.proto.SplitConfig(splits=[
        tfx.proto.SplitConfig.Split(name="train", hash_buckets=1),
        tfx.proto.SplitConfig.Split(name="eval", hash_buckets=1)]))
    example_gen = tfx.components.CsvExampleGen(input_base=data_root, output_config=output_config)
    statistics = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema = tfx.components.SchemaGen(statistics=statistics.outputs["statistics"], infer_feature_shape=True)
    transform = tfx.components.Transform(examples=example_gen.outputs["examples"],
                                         schema=schema.outputs["schema"], module_file=module_file)
    trainer = tfx.components.Trainer(
        module_file=module_file, examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"], schema=schema.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=["train"]), eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=dict(custom_config or {}))
    eval_config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(label_key=LABEL_KEY, signature_name="serving_default")],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=[tfma.MetricConfig(
            class_name="SparseCategoricalAccuracy",
            threshold=tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
                lower_bound={"value": float(min_accuracy)})))])])
    evaluator = tfx.components.Evaluator(examples=example_gen.outputs["examples"],
                                         model=trainer.outputs["model"], eval_config=eval_config,
                                         example_splits=["eval"])
    return {"example_gen": example_gen, "statistics": statistics, "schema": schema, "transform": transform,
            "trainer": trainer, "evaluator": evaluator}


def add_privacy_audit(team: Dict[str, Any], *, max_auc: float = 0.6, attacks: Sequence[str] = ("threshold",),
                      reference_models: int = 0, baseline: bool = True, seed: int = 0, name: str = "",
                      signature_name: str = "serving_default", with_transform_graph: bool = False) -> Dict[str, Any]:
    """The privacy audit a team adds: ``{name: component}`` (references, evaluator) to put before Pusher.

    ``reference_models`` K > 0 trains K references by calling the Trainer's own ``run_fn`` on seeded halves of
    the examples (LiRA / RMIA then available in ``attacks``). ``baseline``: AND TFMA's blessing in.
    ``signature_name="transformed_examples"`` with ``with_transform_graph``: the signature over transformed
    examples, the evaluator applying the Transform graph itself.
    """
    from privacy_audit.components import MembershipInferenceEvaluator, ReferenceModelTrainer

    examples = team["example_gen"].outputs["examples"]
    out: Dict[str, Any] = {}
    references = None
    if reference_models:
        references = ReferenceModelTrainer.for_tfx_trainer(
            team["trainer"], examples, transform_graph=team["transform"].outputs["transform_graph"],
            schema=team["schema"].outputs["schema"], k=reference_models, seed=seed,
            model_variant="team_model" + name)
        out["references" + name] = references.with_id("ReferenceModelTrainer" + name)
    audit = MembershipInferenceEvaluator(
        examples=examples, model=team["trainer"].outputs["model"], label_key=LABEL_KEY,
        baseline_blessing=team["evaluator"].outputs["blessing"] if baseline else None,
        reference_models=references.outputs["reference_models"] if references is not None else None,
        attacks=list(attacks), max_auc=max_auc, seed=seed, model_variant="team_model" + name,
        signature_name=signature_name,
        transform_graph=team["transform"].outputs["transform_graph"] if with_transform_graph else None,
        slicing={"entire_dataset": True, "by_class": True, "feature_keys": ["writer"]})
    out["audit" + name] = audit.with_id("MembershipInferenceEvaluator" + name)
    return out


def pusher(model_channel, blessing_channel, destination: str, name: str = ""):
    from tfx import v1 as tfx

    return tfx.components.Pusher(
        model=model_channel, model_blessing=blessing_channel,
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=destination))).with_id("Pusher" + name)


def create_pipeline(*, pipeline_root: str, data_root: str, serving_dir: str, metadata_path: Optional[str],
                    pipeline_name: str = "existing-tfx-pipeline", max_auc: float = 0.6, min_accuracy: float = 0.8,
                    reference_models: int = 0, attacks: Sequence[str] = ("threshold",),
                    custom_config: Optional[Dict[str, Any]] = None, seed: int = 0,
                    beam_pipeline_args: Optional[List[str]] = None):
    """The whole pipeline: the team's components, the audit, Pusher gated by the audit's ModelBlessing."""
    from tfx import v1 as tfx

    team = team_components(data_root, min_accuracy=min_accuracy, custom_config=custom_config)
    audit = add_privacy_audit(team, max_auc=max_auc, attacks=attacks, reference_models=reference_models, seed=seed)
    push = pusher(team["trainer"].outputs["model"], audit["audit"].outputs["blessing"], serving_dir)
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root,
        components=list(team.values()) + list(audit.values()) + [push], enable_cache=True,
        metadata_connection_config=(tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
                                    if metadata_path else None),
        beam_pipeline_args=list(beam_pipeline_args or []))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-auc", type=float, default=0.6)
    parser.add_argument("--min-accuracy", type=float, default=0.8)
    parser.add_argument("--reference-models", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--kfp-output", help="compile for Kubeflow Pipelines v2 to this file instead of running")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.output_dir)
    data_root = os.path.join(out, "data")
    if not os.path.exists(os.path.join(data_root, "digits.csv")):
        write_data(data_root)
    attacks = ("threshold", "lira") if args.reference_models else ("threshold",)
    kw = dict(data_root=data_root, serving_dir=os.path.join(out, "serving"), max_auc=args.max_auc,
              min_accuracy=args.min_accuracy, reference_models=args.reference_models, attacks=attacks,
              custom_config={"epochs": args.epochs, "checkpoint_every": 10})
    if args.kfp_output:
        from tfx import v1 as tfx

        pipeline = create_pipeline(pipeline_root=os.path.join(out, "root"), metadata_path=None, **kw)
        runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
            config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(), output_filename=args.kfp_output)
        runner.run(pipeline, write_out=True)
        print(f"wrote {args.kfp_output}")
        return 0
    from tfx import v1 as tfx

    pipeline = create_pipeline(pipeline_root=os.path.join(out, "root"),
                               metadata_path=os.path.join(out, "metadata.sqlite"),
                               beam_pipeline_args=["--direct_running_mode=in_memory"], **kw)
    tfx.orchestration.LocalDagRunner().run(pipeline)
    pushed = sorted(os.listdir(os.path.join(out, "serving"))) if os.path.isdir(os.path.join(out, "serving")) else []
    print(json.dumps({"pushed": pushed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
