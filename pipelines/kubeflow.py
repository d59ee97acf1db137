"""`privacy-audit compile-kfp`: the Kubeflow Pipelines v2 pipeline spec (IR YAML, the form `kfp.Client`
uploads), compiled by TFX's KubeflowV2DagRunner. Needs only `kfp-pipeline-spec`, not the `kfp` SDK."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile
from typing import Any, Dict, List, Optional

DEFAULT_IMAGE = "privacy-audit:latest"
# The Dockerfile in deploy/ bakes the digits CSV here, so the default pipeline runs with no data bucket.
IMAGE_DIGITS_DIR = "/opt/privacy-audit/data/digits"


# --------------------------------------------------------------------------------------------------
# Run-time parameters: what a platform team changes per run or per recurring run without recompiling.

# A gate threshold left unset compiles to the value no result can exceed (AUC and attacker advantage are at
# most 1; an ε lower bound of 100 would need a false-positive rate below e^-100, beyond any finite audit), so
# the parameter always exists and its default keeps today's behaviour: no gate on that metric.
GATE_OFF = {"max_auc": 1.0, "max_attacker_advantage": 1.0, "max_epsilon_lower_bound": 100.0}
_PARAM_NAME = re.compile(r"[^A-Za-z0-9_]+")


def _param(name: str, ptype: type, default: Any, description: str):
    from tfx.v1.dsl.experimental import RuntimeParameter

    return RuntimeParameter(name=name, ptype=ptype, default=ptype(default), description=description)


def with_runtime_parameters(variants: List[Any], audit: Any, data_root: str):
    """Replaces the settings a run may change by TFX RuntimeParameters (KFP pipeline parameters).

    Parameters: ``data_root``; the gate's ``max_auc``, ``max_attacker_advantage``, ``max_epsilon_lower_bound``
    (unset: GATE_OFF); ``epochs`` (``epochs_<variant>`` when the variants' epochs differ); and
    ``target_epsilon_<variant>`` for each private variant calibrated to a target ε. Defaults are the compiled
    values. Returns (variants, audit, data_root, {name: RuntimeParameter}); the inputs are not modified.
    """
    params: Dict[str, Any] = {}

    def add(name, ptype, default, description):
        if name in params:
            raise ValueError(f"two settings become the Kubeflow parameter {name!r}; rename a model variant")
        params[name] = _param(name, ptype, default, description)
        return params[name]

    root = add("data_root", str, data_root, "data directory as the pods see it (same format as compiled: "
                                             "CSV files or GZIP TFRecords)")
    gate = {k: add(k, float, GATE_OFF[k] if getattr(audit, k) is None else getattr(audit, k),
                   f"privacy gate: fail when a slice's {k[4:]} exceeds this ({GATE_OFF[k]:g} = no gate)")
            for k in GATE_OFF}
    audit = dataclasses.replace(audit, **gate)
    shared_epochs = len({v.recipe.epochs for v in variants}) == 1
    if shared_epochs:
        epochs = add("epochs", int, variants[0].recipe.epochs, "training epochs of every model variant")
    out = []
    for v in variants:
        key = _PARAM_NAME.sub("_", v.name)
        recipe = v.recipe
        changes = {"epochs": epochs if shared_epochs else add(f"epochs_{key}", int, recipe.epochs,
                                                                f"training epochs of {v.name}")}
        if recipe.private and recipe.target_epsilon is not None:
            changes["target_epsilon"] = add(f"target_epsilon_{key}", float, recipe.target_epsilon,
                                            f"DP ε of {v.name} (σ is calibrated to it when the run starts)")
        # The recipe keeps the compiled values (the parameters' defaults); the trainers get the parameters as
        # run-time overrides of it (TrainingRecipe.with_overrides).
        out.append(dataclasses.replace(v, runtime_parameters={**v.runtime_parameters, **changes}))
    return out, audit, root, params


def set_parameter_defaults(spec: Dict[str, Any], params: Dict[str, Any]) -> None:
    """Writes each pipeline parameter's default and description into ``root.inputDefinitions``.

    TFX's compiler declares the parameters with their types only, so a KFP run would have to give every one;
    with a default (and ``isOptional``, as the kfp SDK writes a parameter with a default) the UI and
    ``create_run``/``create_recurring_run`` need only the ones that change.
    """
    declared = spec.setdefault("root", {}).setdefault("inputDefinitions", {}).setdefault("parameters", {})
    for name, p in params.items():
        if name not in declared:  # a parameter no component uses (e.g. no private variant): not compiled
            continue
        declared[name].update(defaultValue=p.default, isOptional=True, description=p.description)


# --------------------------------------------------------------------------------------------------
# Resources per component kind, and caching.

RESOURCE_KINDS = ("ExampleGen", "DPTrainer", "ReferenceModelTrainer", "MembershipInferenceEvaluator",
                  "PrivacyReportGenerator")
GPU_KINDS = ("DPTrainer", "ReferenceModelTrainer")  # the others run no TensorFlow training
RESOURCE_KEYS = ("cpu_request", "cpu_limit", "memory_request", "memory_limit", "gpu_count", "gpu_type")
DEFAULT_GPU_TYPE = "nvidia.com/gpu"
# The evaluator's Beam work runs the DirectRunner inside its pod unless beam_pipeline_args name another runner:
# then it needs cores and memory for the per-example records of the largest slice; with a distributed runner
# the pod only submits the job.
EVALUATOR_DIRECT_RUNNER = {"cpu_request": "2", "cpu_limit": "4", "memory_request": "4Gi", "memory_limit": "8Gi"}
EVALUATOR_REMOTE_RUNNER = {"cpu_request": "1", "memory_request": "2Gi"}
DEFAULT_RESOURCES = {
    "ExampleGen": {"cpu_request": "1", "memory_request": "2Gi"},
    "DPTrainer": {"cpu_request": "2", "memory_request": "4Gi"},
    "ReferenceModelTrainer": {"cpu_request": "2", "memory_request": "4Gi"},
    "PrivacyReportGenerator": {"cpu_request": "0.5", "memory_request": "1Gi"},
}
# Caching per kind: on, except for the report, so that a scheduled run always writes a fresh report (and
# history entry) even when nothing upstream changed.
DEFAULT_CACHING = {k: k != "PrivacyReportGenerator" for k in RESOURCE_KINDS}
_MEMORY_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
                 "Ki": 2.0 ** 10, "Mi": 2.0 ** 20, "Gi": 2.0 ** 30, "Ti": 2.0 ** 40, "Pi": 2.0 ** 50, "Ei": 2.0 ** 60}
_QUANTITY = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def _quantity(kind: str, key: str, value: Any) -> float:
    """A Kubernetes quantity as KFP's ResourceSpec doubles hold it: CPU in cores ("500m" = 0.5), memory in
    GB of 10^9 bytes ("8Gi" = 8.59), which the KFP backend writes back as "<value>G"."""
    m = _QUANTITY.match(str(value))
    units = ("", "m") if key.startswith("cpu") else tuple(_MEMORY_UNITS)
    if not m or m.group(2) not in units:
        example = "2 or 500m" if key.startswith("cpu") else "8Gi, 512Mi or 4G"
        raise ValueError(f"resources: {kind}.{key} = {value!r} is not a Kubernetes quantity (e.g. {example})")
    number = float(m.group(1))
    if number < 0:
        raise ValueError(f"resources: {kind}.{key} = {value!r} is negative")
    if key.startswith("cpu"):
        return number / 1000.0 if m.group(2) == "m" else number
    return number * _MEMORY_UNITS[m.group(2)] / 1e9


def parse_resource_flags(flags: Optional[List[str]]) -> Dict[str, Dict[str, Any]]:
    """``["DPTrainer.memory_request=8Gi", ...]`` (compile-kfp --resource) → ``{kind: {key: value}}``."""
    out: Dict[str, Dict[str, Any]] = {}
    for flag in flags or []:
        target, sep, value = flag.partition("=")
        kind, dot, key = target.partition(".")
        if not sep or not dot:
            raise ValueError(f"--resource {flag!r}: expected KIND.KEY=VALUE, e.g. DPTrainer.memory_request=8Gi")
        out.setdefault(kind.strip(), {})[key.strip()] = value.strip()
    return out


def resolve_resources(configured: Optional[Dict[str, Any]], beam_pipeline_args: List[str]) -> Dict[str, Dict[str, Any]]:
    """Per kind, the ResourceSpec KFP v2 reads (``cpuRequest``/``cpuLimit`` in cores, ``memoryRequest``/
    ``memoryLimit`` in GB, ``accelerator {type, count}``): the defaults, overridden key by key by
    ``configured`` ({kind: {cpu_request, cpu_limit, memory_request, memory_limit, gpu_count, gpu_type}}).
    Raises ValueError naming the kind and key for unknown names, negative or malformed quantities, a request
    above its limit, and GPUs for a kind that cannot use them."""
    configured = dict(configured or {})
    unknown = sorted(set(configured) - set(RESOURCE_KINDS))
    if unknown:
        raise ValueError(f"resources: unknown component kind {unknown[0]!r}; valid: {', '.join(RESOURCE_KINDS)}")
    remote = any(a.split("=", 1)[0] == "--runner" and "direct" not in a.lower() for a in beam_pipeline_args)
    defaults = {**DEFAULT_RESOURCES,
                "MembershipInferenceEvaluator": EVALUATOR_REMOTE_RUNNER if remote else EVALUATOR_DIRECT_RUNNER}
    out = {}
    for kind in RESOURCE_KINDS:
        given = configured.get(kind) or {}
        if not isinstance(given, dict):
            raise ValueError(f"resources: {kind} must map keys ({', '.join(RESOURCE_KEYS)}) to values, got {given!r}")
        bad = sorted(set(given) - set(RESOURCE_KEYS))
        if bad:
            raise ValueError(f"resources: unknown key {kind}.{bad[0]}; valid: {', '.join(RESOURCE_KEYS)}")
        merged = {**defaults.get(kind, {}), **{k: v for k, v in given.items() if v is not None}}
        out[kind] = _resource_spec(kind, merged)
    return out


def _resource_spec(kind: str, r: Dict[str, Any]) -> Dict[str, Any]:
    spec: Dict[str, Any] = {}
    for key, field in (("cpu_request", "cpuRequest"), ("cpu_limit", "cpuLimit"),
                       ("memory_request", "memoryRequest"), ("memory_limit", "memoryLimit")):
        if key in r:
            spec[field] = _quantity(kind, key, r[key])
    for what in ("cpu", "memory"):
        req, lim = spec.get(f"{what}Request"), spec.get(f"{what}Limit")
        if req is not None and lim is not None and req > lim:
            raise ValueError(f"resources: {kind}.{what}_request ({r[what + '_request']}) exceeds "
                             f"{kind}.{what}_limit ({r[what + '_limit']})")
    count = r.get("gpu_count")
    if count is None and r.get("gpu_type"):
        raise ValueError(f"resources: {kind}.gpu_type is set but {kind}.gpu_count is not")
    if count is not None:
        if isinstance(count, bool) or not str(count).strip().isdigit():
            raise ValueError(f"resources: {kind}.gpu_count = {count!r} must be a whole number >= 0")
        if int(count) and kind not in GPU_KINDS:
            raise ValueError(f"resources: {kind} cannot use a GPU (only {' and '.join(GPU_KINDS)} train models)")
        if int(count):
            spec["accelerator"] = {"type": str(r.get("gpu_type") or DEFAULT_GPU_TYPE), "count": str(int(count))}
    return spec


def _kind(task_name: str) -> str:
    """The component kind of a compiled task ("DPTrainer-dp-eps1" → "DPTrainer"; any ExampleGen)."""
    head = task_name.split("-", 1)[0]
    return "ExampleGen" if head.endswith("ExampleGen") else head


def set_resources_and_caching(spec: Dict[str, Any], resources: Dict[str, Dict[str, Any]],
                              caching: Dict[str, bool]) -> None:
    """Writes each task's container resources and caching option into the spec (in place).

    TFX has a hook for resources (``component.with_platform_config(ResourceSpec)``), but its KubeflowV2 compiler
    drops it for file-based ExampleGens; writing the same ResourceSpec fields here covers every kind alike.
    Caching is set per task (``cachingOptions.enableCache``; ``{}`` = off, as the kfp SDK writes it), where
    TFX's compiler sets one value for the whole pipeline.
    """
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    for name, task in spec["root"]["dag"]["tasks"].items():
        kind = _kind(name)
        task["cachingOptions"] = {"enableCache": True} if caching.get(kind, True) else {}
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        container = executors.get(label, {}).get("container")
        if container is not None and resources.get(kind):  # an Importer has no container
            container["resources"] = dict(resources[kind])


# --------------------------------------------------------------------------------------------------
# The image name.

_IMAGE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+$|"
                    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")


def check_image(image: str) -> Optional[str]:
    """Refuses an image reference a cluster cannot pull reproducibly; returns a warning or None.

    Needs a tag (``:TAG``) or a digest (``@sha256:...``) and no whitespace. ``latest`` is allowed with a warning:
    which image a scheduled run gets then depends on the day it runs.
    """
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"--image {image!r} contains whitespace; give REGISTRY/NAME:TAG")
    name, at, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    repo, colon, tag = (name.rpartition(":") if ":" in last else (name, "", ""))
    if not _IMAGE.match(repo):
        raise ValueError(f"--image {image!r}: {repo!r} is not a valid image name (lower-case letters, digits, "
                         "'.', '_', '-', path segments separated by '/')")
    if at:
        if not re.match(r"^sha256:[0-9a-f]{64}$", digest):
            raise ValueError(f"--image {image!r}: the digest must be sha256: and 64 hex digits")
        return None
    if not colon or not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", tag):
        raise ValueError(f"--image {image!r} has no tag: give REGISTRY/NAME:TAG (or @sha256:DIGEST), so that every "
                         "run pulls the image this pipeline was compiled for")
    if tag == "latest":
        return (f"warning: --image {image!r} uses the tag 'latest': a scheduled run gets whatever image 'latest' "
                "points to on that day; pin a version tag or digest")
    return None


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
    p.add_argument("--resource", action="append", dest="resources", metavar="KIND.KEY=VALUE",
                   help="CPU/memory request or limit, or GPUs, of one component kind, repeatable: "
                        f"KIND one of {', '.join(RESOURCE_KINDS)}; KEY one of {', '.join(RESOURCE_KEYS)} "
                        "(e.g. --resource DPTrainer.memory_request=8Gi --resource DPTrainer.gpu_count=1); "
                        "the config file's `resources:` takes the same keys per kind")


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


def compile_pipeline(pipeline, output: str, image: str, *, parameters: Optional[Dict[str, Any]] = None,
                     resources: Optional[Dict[str, Dict[str, Any]]] = None,
                     caching: Optional[Dict[str, bool]] = None) -> Dict[str, Any]:
    """Compiles a TFX pipeline to KFP v2 IR and writes it atomically; returns the PipelineSpec dict.

    parameters: the RuntimeParameters the pipeline uses ({name: parameter}, from with_runtime_parameters), whose
    defaults go into the spec; resources: {kind: ResourceSpec fields} (resolve_resources; default: its
    defaults); caching: {kind: bool} (default: DEFAULT_CACHING).
    """
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
    set_parameter_defaults(spec, parameters or {})
    set_resources_and_caching(spec, resources if resources is not None else resolve_resources(None, []),
                              DEFAULT_CACHING if caching is None else caching)
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


def _configured_resources(from_config: Optional[Dict[str, Any]], flags: Optional[List[str]]) -> Dict[str, Any]:
    """The config file's `resources:` with the command line's --resource flags on top, key by key."""
    if from_config is not None and not isinstance(from_config, dict):
        raise ValueError(f"resources: expected a mapping of component kinds to settings, got {from_config!r}")
    configured = {k: dict(v) if isinstance(v, dict) else v for k, v in (from_config or {}).items()}
    for kind, keys in parse_resource_flags(flags).items():
        if not isinstance(configured.get(kind, {}), dict):
            continue  # resolve_resources names the malformed config entry
        configured.setdefault(kind, {}).update(keys)
    return configured


def main_compile(args: argparse.Namespace) -> int:
    from privacy_audit.pipelines import run as run_mod
    from privacy_audit.pipelines.pipeline import create_pipeline

    if os.path.isdir(args.output):
        raise IsADirectoryError(f"--output {args.output} is a directory; give a file name such as pipeline.yaml")
    warning = check_image(args.image)
    if warning:
        print(warning, file=sys.stderr)
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
    beam_args = s["beam_pipeline_args"] or []
    resources = resolve_resources(_configured_resources(s.get("resources"), getattr(args, "resources", None)),
                                  beam_args)
    caching = {k: bool(s["cache"]) and on for k, on in DEFAULT_CACHING.items()}
    variants, audit, data_root, params = with_runtime_parameters(run_mod.build_variants(s), audit, data_root)
    pipeline = create_pipeline(
        pipeline_root=args.pipeline_root, label_key=label_key, data_root=data_root,
        variants=variants, audit=audit, pipeline_name=s["pipeline_name"],
        feature_keys=s["feature_keys"], seed=int(s["seed"]), beam_pipeline_args=beam_args,
        enable_cache=bool(s["cache"]), report_title=s["title"], for_kubeflow=True)
    spec = compile_pipeline(pipeline, args.output, args.image, parameters=params, resources=resources,
                            caching=caching)
    tasks = sorted(spec["root"]["dag"]["tasks"])
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    defaults = ", ".join(f"{k}={p.get('defaultValue')}" for k, p in sorted(declared.items()))
    print(f"Wrote KFP v2 pipeline spec {os.path.abspath(args.output)} ({len(tasks)} tasks: {', '.join(tasks)}; "
          f"image {args.image}; parameters: {defaults})")
    return 0
