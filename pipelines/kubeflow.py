"""`privacy-audit compile-kfp`: the Kubeflow Pipelines v2 pipeline spec (IR YAML, the form `kfp.Client`
uploads), compiled by TFX's KubeflowV2DagRunner. Needs only `kfp-pipeline-spec`, not the `kfp` SDK."""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any, Dict, List, Optional

DEFAULT_IMAGE = "privacy-audit:latest"
# The Dockerfile in deploy/ bakes the digits CSV here, so the default pipeline runs with no data bucket.
IMAGE_DIGITS_DIR = "/opt/privacy-audit/data/digits"


def add_compile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="where to write the spec (.yaml or .json)")
    p.add_argument("--image", default=DEFAULT_IMAGE, help="container image with this project (deploy/Dockerfile)")
    p.add_argument("--pipeline-root", default="gs://YOUR_BUCKET/privacy-audit",
                   help="artifact root the tasks write to (gs:// or s3://)")
    p.add_argument("--config", help="the same YAML/JSON settings as `privacy-audit run --config`")
    p.add_argument("--data", help="data directory as seen from inside the cluster (default: the digits "
                                  f"baked into the image, {IMAGE_DIGITS_DIR})")
    p.add_argument("--label-key", help="label feature (default for the baked-in digits: label)")
    p.add_argument("--pipeline-name", default=None)
    p.add_argument("--beam-pipeline-arg", action="append", dest="beam_pipeline_args",
                   help="Beam argument for the Beam components, repeatable (e.g. --beam-pipeline-arg=--runner=DataflowRunner)")


def compile_pipeline(pipeline, output: str, image: str) -> Dict[str, Any]:
    """Compiles a TFX pipeline to KFP v2 IR and writes it atomically; returns the PipelineSpec dict."""
    import yaml
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as v2

    # Pipeline spec schema 2.1: parameters as `parameterType` / `runtimeValue.constant`, which is what the KFP 2.x
    # backend resolves (it rejects 2.0's `constantValue`), and the executors read ExecutorInput.parameterValues.
    runner = v2.KubeflowV2DagRunner(config=v2.KubeflowV2DagRunnerConfig(default_image=image,
                                                                        use_pipeline_spec_2_1=True),
                                    output_dir=tempfile.mkdtemp(prefix="kfp-compile-"))
    job = runner.run(pipeline, write_out=False)
    spec = job["pipelineSpec"]
    # The job's runtime config carries the pipeline root; KFP takes it at submission, the IR keeps a default.
    spec.setdefault("defaultPipelineRoot", job.get("runtimeConfig", {}).get("gcsOutputDirectory")
                    or pipeline.pipeline_info.pipeline_root)
    out = os.path.abspath(output)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        if out.endswith(".json"):
            import json

            json.dump(spec, f, indent=2)
        else:
            yaml.safe_dump(spec, f, sort_keys=False)
    os.replace(tmp, out)
    return spec


def main_compile(args: argparse.Namespace) -> int:
    from pipelines import run as run_mod
    from pipelines.pipeline import AuditSpec, create_pipeline

    if os.path.isdir(args.output):
        raise IsADirectoryError(f"--output {args.output} is a directory; give a file name such as pipeline.yaml")
    # Every settings key unset (None) so that only the config file and these flags override DEFAULTS.
    ns = argparse.Namespace(**{k: None for k in run_mod.DEFAULTS})
    ns.config = args.config
    ns.data, ns.label_key, ns.pipeline_name = args.data, args.label_key, args.pipeline_name
    ns.beam_pipeline_args = args.beam_pipeline_args
    s = run_mod.resolve_settings(ns)
    data_root = s["data"] or IMAGE_DIGITS_DIR
    label_key = s["label_key"] or "label"
    slicing = {name: True for name in s["slicing"] or []}
    if s["slice_feature_keys"]:
        slicing["feature_keys"] = s["slice_feature_keys"]
    audit = AuditSpec(attacks=tuple(s["attacks"]), slicing=slicing, min_slice_size=s["min_slice_size"],
                      max_auc=s["max_auc"], max_attacker_advantage=s["max_attacker_advantage"],
                      max_epsilon_lower_bound=s["max_epsilon_lower_bound"])
    pipeline = create_pipeline(
        pipeline_root=args.pipeline_root, label_key=label_key, data_root=data_root,
        variants=run_mod.build_variants(s), audit=audit, pipeline_name=s["pipeline_name"],
        feature_keys=s["feature_keys"], seed=int(s["seed"]), beam_pipeline_args=s["beam_pipeline_args"] or [],
        enable_cache=bool(s["cache"]), report_title=s["title"], for_kubeflow=True)
    spec = compile_pipeline(pipeline, args.output, args.image)
    tasks = sorted(spec["root"]["dag"]["tasks"])
    print(f"Wrote KFP v2 pipeline spec {os.path.abspath(args.output)} ({len(tasks)} tasks: {', '.join(tasks)}; "
          f"image {args.image})")
    return 0
