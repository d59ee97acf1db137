"""`privacy-audit compile-kfp`: the Kubeflow Pipelines v2 pipeline spec (IR YAML, the form `kfp.Client`
uploads), compiled by TFX's KubeflowV2DagRunner. Needs only `kfp-pipeline-spec`, not the `kfp` SDK."""

from __future__ import annotations

import argparse
import os
import re
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


_ARGO_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")
# Argo caps DAG task names at 128 characters; KFP appends "-driver" to each.
_MAX_NAME = 120


def _argo_name(name: str) -> str:
    return _ARGO_UNSAFE.sub("-", name).strip("-")


def argo_safe_names(spec: Dict[str, Any]) -> Dict[str, str]:
    """Renames tasks, components and executor labels so that KFP's Argo backend accepts them.

    KFP 2.x compiles each pipeline task to an Argo DAG task of the same name (plus "<name>-driver") and
    Argo requires names of letters, digits and '-': TFX's node ids such as "DPTrainer.non_private" fail
    run creation. "DPTrainer.non_private" becomes "DPTrainer-non-private" everywhere it is referenced
    (task keys, taskInfo, dependentTasks, producerTask, componentRef, component keys, executorLabel,
    deploymentSpec executors). Returns {old task name: new task name}; raises ValueError when two
    names collide (e.g. variants "dp_1" and "dp-1").
    """
    def mapping(names, what):
        out: Dict[str, str] = {}
        taken: Dict[str, str] = {}
        for old in names:
            new = _argo_name(old)
            if not new or len(new) > _MAX_NAME:
                raise ValueError(f"{what} {old!r} cannot be turned into a Kubeflow name (letters, digits, '-', "
                                 f"at most {_MAX_NAME} characters)")
            if new in taken:
                raise ValueError(f"{what}s {taken[new]!r} and {old!r} both become {new!r} on Kubeflow; "
                                 "rename one (e.g. the model variant)")
            taken[new] = old
            out[old] = new
        return out

    dag = spec["root"]["dag"]
    tasks = mapping(dag["tasks"], "task")
    comps = mapping(spec.get("components", {}), "component")
    execs = mapping(spec.get("deploymentSpec", {}).get("executors", {}), "executor")

    def rename_producers(inputs: Dict[str, Any]) -> None:
        for art in inputs.get("artifacts", {}).values():
            ref = art.get("taskOutputArtifact")
            if ref and ref.get("producerTask") in tasks:
                ref["producerTask"] = tasks[ref["producerTask"]]
        for param in inputs.get("parameters", {}).values():
            ref = param.get("taskOutputParameter")
            if ref and ref.get("producerTask") in tasks:
                ref["producerTask"] = tasks[ref["producerTask"]]

    new_tasks = {}
    for old, task in dag["tasks"].items():
        new = tasks[old]
        task.setdefault("taskInfo", {})["name"] = new
        if "dependentTasks" in task:
            task["dependentTasks"] = [tasks.get(d, d) for d in task["dependentTasks"]]
        rename_producers(task.get("inputs", {}))
        ref = task.get("componentRef", {})
        if ref.get("name") in comps:
            ref["name"] = comps[ref["name"]]
        new_tasks[new] = task
    dag["tasks"] = new_tasks
    outputs = dag.get("outputs", {})  # TFX pipelines have none; renamed for completeness
    selectors = [s for o in outputs.get("artifacts", {}).values() for s in o.get("artifactSelectors", [])]
    selectors += [o["valueFromParameter"] for o in outputs.get("parameters", {}).values() if "valueFromParameter" in o]
    for sel in selectors:
        sel["producerSubtask"] = tasks.get(sel.get("producerSubtask"), sel.get("producerSubtask"))
    if "components" in spec:
        for comp in spec["components"].values():
            if comp.get("executorLabel") in execs:
                comp["executorLabel"] = execs[comp["executorLabel"]]
        spec["components"] = {comps[k]: v for k, v in spec["components"].items()}
    if execs:
        spec["deploymentSpec"]["executors"] = {execs[k]: v for k, v in spec["deploymentSpec"]["executors"].items()}
    return tasks


def compile_pipeline(pipeline, output: str, image: str) -> Dict[str, Any]:
    """Compiles a TFX pipeline to KFP v2 IR and writes it atomically; returns the PipelineSpec dict."""
    import yaml
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as v2

    # Pipeline spec schema 2.1: parameters as `parameterType` / `runtimeValue.constant`, which is what the KFP 2.x
    # backend resolves (it rejects 2.0's `constantValue`), and the executors read ExecutorInput.parameterValues.
    with tempfile.TemporaryDirectory(prefix="kfp-compile-") as tmp_dir:
        runner = v2.KubeflowV2DagRunner(config=v2.KubeflowV2DagRunnerConfig(default_image=image,
                                                                            use_pipeline_spec_2_1=True),
                                        output_dir=tmp_dir)
        job = runner.run(pipeline, write_out=False)
    spec = job["pipelineSpec"]
    argo_safe_names(spec)
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
    from privacy_audit.pipelines import run as run_mod
    from privacy_audit.pipelines.pipeline import create_pipeline

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
    # Reference models and the one-run audit are opt-in here (config keys reference_models, audit_canaries):
    # on a cluster each is K (or one) more training run per variant.
    audit = run_mod.build_audit(s, demo=False)
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
