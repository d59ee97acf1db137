"""Checks a compiled privacy-audit pipeline spec with the `kfp` SDK, as the KFP client and backend read it.

Runs in deploy/'s own environment (kfp 2.x, kfp-pipeline-spec 2.x; see requirements.txt):

    deploy/.venv-kfp/bin/python deploy/check_package.py --package pipeline.yaml [--image IMAGE]

It loads the file the way submit.py does (`kfp.components.load_component_from_file`), parses it
strictly into the SDK's PipelineSpec proto (an unknown field is an error), recompiles the loaded
pipeline with `kfp.compiler.Compiler` and compares, and checks what the KFP 2.x backend needs:
task names Argo accepts (letters, digits, '-'), every task has a component and a container
executor, every parameter is a `runtimeValue.constant` (the backend rejects the 2.0 schema's
`constantValue`), every input artifact comes from a task the task depends on, every pipeline parameter a
task reads is declared with a default. Prints a JSON summary on stdout (the pipeline parameters with their
types and defaults, and per task its image, command, executor, inputs, resources and caching, all read
through the SDK's protos); exits 1 listing the problems.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from typing import Any, Dict, List


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", required=True, help="pipeline spec from `privacy-audit compile-kfp`")
    p.add_argument("--image", default=None, help="the container image every executor must use")
    return p.parse_args(argv)


# KFP's Argo backend makes each task an Argo DAG task of the same name, and Argo accepts only these.
ARGO_NAME = re.compile(r"^[a-zA-Z0-9][-a-zA-Z0-9]*$")


def _problems(spec: Dict[str, Any], image: str | None) -> List[str]:
    out: List[str] = []
    tasks = spec.get("root", {}).get("dag", {}).get("tasks", {})
    components = spec.get("components", {})
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    legacy: List[str] = []
    if not tasks:
        out.append("the pipeline has no tasks")
    for name, task in tasks.items():
        if not ARGO_NAME.match(name) or len(name) > 120:
            out.append(f"task {name!r}: Argo (KFP's backend) needs letters, digits and '-' only, at most 120")
        if task.get("taskInfo", {}).get("name") != name:
            out.append(f"task {name}: taskInfo.name {task.get('taskInfo', {}).get('name')!r} differs from the task key")
        comp_name = task.get("componentRef", {}).get("name")
        comp = components.get(comp_name)
        if comp is None:
            out.append(f"task {name}: component {comp_name!r} is not defined")
            continue
        container = executors.get(comp.get("executorLabel"), {}).get("container")
        if container is None:
            out.append(f"task {name}: no container executor {comp.get('executorLabel')!r}")
        elif image is not None and container.get("image") != image:
            out.append(f"task {name}: image {container.get('image')!r}, expected {image!r}")
        inputs = task.get("inputs", {})
        declared = comp.get("inputDefinitions", {})
        root_params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
        for key, param in inputs.get("parameters", {}).items():
            if key not in declared.get("parameters", {}):
                out.append(f"task {name}: parameter {key!r} is not declared by its component")
            source = param.get("componentInputParameter")
            if source is not None and "defaultValue" not in root_params.get(source, {}):
                out.append(f"task {name}: parameter {key!r} reads pipeline parameter {source!r}, which has no "
                           "default (every run would have to give it)")
            runtime = param.get("runtimeValue")
            if runtime is not None and "constant" not in runtime:
                legacy.append(f"{name}.{key}")
        depends = set(task.get("dependentTasks", []))
        for key, art in inputs.get("artifacts", {}).items():
            if key not in declared.get("artifacts", {}):
                out.append(f"task {name}: input artifact {key!r} is not declared by its component")
            producer = art.get("taskOutputArtifact", {}).get("producerTask")
            if producer is None:
                continue
            if producer not in tasks:
                out.append(f"task {name}: input {key!r} comes from unknown task {producer!r}")
            elif producer not in depends:
                out.append(f"task {name}: input {key!r} comes from {producer!r}, which is not in dependentTasks")
            else:
                out_key = art["taskOutputArtifact"].get("outputArtifactKey")
                producer_comp = components.get(tasks[producer].get("componentRef", {}).get("name"), {})
                if out_key not in producer_comp.get("outputDefinitions", {}).get("artifacts", {}):
                    out.append(f"task {name}: input {key!r} reads {producer}.{out_key}, which that task does not output")
    if legacy:
        out.append(f"{len(legacy)} parameters (e.g. {legacy[0]}) are not runtimeValue.constant: the KFP 2 backend "
                   "resolves only that form (pipeline spec schema 2.1), not schema 2.0's constantValue")
    return out


def _parameters(component) -> Dict[str, Any]:
    """The pipeline parameters as the SDK's PipelineSpec proto reads them: {name: {type, default}}."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    out = {}
    for name, p in component.pipeline_spec.root.input_definitions.parameters.items():
        out[name] = {"type": pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(p.parameter_type),
                     "default": json_format.MessageToDict(p.default_value) if p.HasField("default_value") else None}
    return out


def _resources(container: Dict[str, Any]) -> Dict[str, Any]:
    """A container's resources, parsed strictly with the SDK's ResourceSpec proto."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    res = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec()
    json_format.ParseDict(container.get("resources", {}), res)
    return json_format.MessageToDict(res, preserving_proto_field_name=True)


def _summary(spec: Dict[str, Any]) -> Dict[str, Any]:
    tasks = {}
    executors = spec["deploymentSpec"]["executors"]
    for name, task in sorted(spec["root"]["dag"]["tasks"].items()):
        comp = spec["components"][task["componentRef"]["name"]]
        container = executors.get(comp["executorLabel"], {}).get("container", {})
        args = list(container.get("args", []))
        class_path = args[args.index("--executor_class_path") + 1] if "--executor_class_path" in args else None
        tasks[name] = {
            "image": container.get("image"),
            "command": container.get("command", []),
            "executor_class_path": class_path,
            "dependent_tasks": sorted(task.get("dependentTasks", [])),
            "input_artifacts": {k: {"producer": v.get("taskOutputArtifact", {}).get("producerTask"),
                                    "output": v.get("taskOutputArtifact", {}).get("outputArtifactKey")}
                                for k, v in sorted(task.get("inputs", {}).get("artifacts", {}).items())},
            "pipeline_parameters": {k: v["componentInputParameter"]
                                    for k, v in sorted(task.get("inputs", {}).get("parameters", {}).items())
                                    if "componentInputParameter" in v},
            "resources": _resources(container),
            "cache": bool(task.get("cachingOptions", {}).get("enableCache", False)),
        }
    return {"pipeline_name": spec["pipelineInfo"]["name"], "schema_version": spec.get("schemaVersion"),
            "default_pipeline_root": spec.get("defaultPipelineRoot"), "tasks": tasks}


def main(argv=None) -> int:
    args = parse_args(argv)
    import yaml
    from google.protobuf import json_format
    from kfp import compiler
    from kfp.components import load_component_from_file
    from kfp.pipeline_spec import pipeline_spec_pb2

    if not os.path.isfile(args.package):
        print(f"check_package: error: {args.package} is not a file", file=sys.stderr)
        return 2
    component = load_component_from_file(args.package)
    with open(args.package) as f:
        spec = yaml.safe_load(f)
    # Strict: a field this SDK's PipelineSpec does not know is an error, not silently dropped.
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    problems = _problems(spec, args.image)
    # The SDK's own compiler writes the loaded pipeline back out: it must come out unchanged.
    with tempfile.TemporaryDirectory() as tmp:
        again = os.path.join(tmp, "recompiled.yaml")
        compiler.Compiler().compile(component, again)
        with open(again) as f:
            recompiled = yaml.safe_load(f)
    for key in sorted(set(spec) | set(recompiled)):
        if spec.get(key) != recompiled.get(key):
            problems.append(f"recompiling with kfp.compiler changes {key!r}")
    summary = _summary(spec)
    summary["kfp_component_name"] = component.name
    summary["parameters"] = _parameters(component)
    summary["problems"] = problems
    print(json.dumps(summary, indent=2, sort_keys=True))
    if problems:
        print("check_package: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
