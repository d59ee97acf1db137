"""Kubeflow Pipelines v2, as far as it goes without a cluster.

- `privacy-audit compile-kfp` writes a KFP v2 PipelineSpec: parsed strictly with the kfp-pipeline-spec
  protos, it holds the custom components, their container executors and the DAG edges, the run-time
  parameters with their defaults, each container's resources and each task's caching option.
- In deploy/'s own environment (kfp 2.x) the SDK loads the same file (submit.py --dry-run and
  deploy/check_package.py), and submit.py creates a run and a recurring run against a local fake of
  the KFP v2beta1 REST API.
- The compiled tasks' container entry point (TFX's KubeflowV2 executor launcher) runs locally with the
  ExecutorInput that KFP would hand it, built from the task's compiled spec: the report task on
  fixture results/ledgers/blessings; the DP trainer task on a tiny Examples artifact, then the
  evaluator task on the trainer's outputs and output metadata, with run-time parameters resolved as KFP does.
- The image's Python environment, built without a Docker engine from the same install steps as
  deploy/Dockerfile (deploy/install_steps.sh) in a fresh venv, runs every compiled task's command line
  (ExampleGen → trainers → evaluators → report) with non-default parameter values.
"""

from __future__ import annotations

import ast
import gzip
import http.server
import json
import os
import posixpath
import re
import shutil
import struct
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "registry.example.com/privacy-audit:test-1"
PIPELINE_ROOT = "gs://audit-bucket/privacy-audit"
# Resources the module's compiled spec asks for on top of the defaults (compile-kfp --resource).
RESOURCE_FLAGS = ["DPTrainer.gpu_count=1", "DPTrainer.gpu_type=nvidia.com/gpu", "DPTrainer.memory_limit=16Gi",
                  "PrivacyReportGenerator.cpu_limit=500m"]
GB = 1e9  # KFP's ResourceSpec holds memory in GB of 10^9 bytes
ENTRYPOINT = ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
EXECUTORS = {
    "DPTrainer": "privacy_audit.components.dp_trainer.executor.Executor",
    "MembershipInferenceEvaluator": "privacy_audit.components.membership_inference.executor.Executor",
    "PrivacyReportGenerator": "privacy_audit.components.privacy_report.executor.Executor",
}
from privacy_audit.pipelines.pipeline import default_variants  # noqa: E402

VARIANTS = tuple(v.name for v in default_variants())  # the default pipeline's variants: non-private, then DP
DP_VARIANT = next(v for v in default_variants() if v.private)
DP = DP_VARIANT.name
TARGET_EPSILON_DP = f"target_epsilon_{DP}"
GIB = 2 ** 30


def _task(component: str, variant: str) -> str:
    """The task of one variant's component on Kubeflow: TFX's node id "DPTrainer.dp_eps1" made Argo-safe."""
    return f"{component}-{variant.replace('_', '-')}"


TRAINER_DP, EVALUATOR_DP = _task("DPTrainer", DP), _task("MembershipInferenceEvaluator", DP)
ARGO_NAME = re.compile(r"^[a-zA-Z0-9][-a-zA-Z0-9]*$")  # what Argo, KFP's backend, accepts as a DAG task name
# deploy/'s own environment (kfp needs protobuf >= 4.21); CI may point this at a cached one.
DEPLOY_VENV = Path(os.environ.get("PRIVACY_AUDIT_KFP_VENV") or ROOT / "deploy" / ".venv-kfp")


def _main_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _env() -> dict:
    env = dict(os.environ)
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    return env


def _tail(text: str, n: int = 3000) -> str:
    return text[-n:]


# --------------------------------------------------------------------------------------------------
# compile-kfp


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The default pipeline compiled by the CLI, as a subprocess: (path, spec dict)."""
    out = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    cli = ROOT / ".venv" / "bin" / "privacy-audit"
    cmd = [str(cli)] if cli.exists() else [_main_python(), "-m", "privacy_audit.pipelines.cli"]
    flags = [a for r in RESOURCE_FLAGS for a in ("--resource", r)]
    proc = subprocess.run(cmd + ["compile-kfp", "--output", str(out), "--image", IMAGE,
                                 "--pipeline-root", PIPELINE_ROOT] + flags,
                          capture_output=True, text=True, env=_env(), timeout=300, cwd=str(out.parent))
    assert proc.returncode == 0, f"compile-kfp failed:\n{_tail(proc.stderr)}"
    assert str(out) in proc.stdout and "6 tasks" in proc.stdout, proc.stdout
    with open(out) as f:
        spec = yaml.safe_load(f)
    return out, spec


def _task_component(spec, task_name):
    task = spec["root"]["dag"]["tasks"][task_name]
    return task, spec["components"][task["componentRef"]["name"]]


def _container(spec, task_name):
    _, comp = _task_component(spec, task_name)
    return spec["deploymentSpec"]["executors"][comp["executorLabel"]]["container"]


def _title(artifact_type: dict) -> str:
    """The schema title of a compiled artifact type (TFX writes instanceSchema YAML)."""
    if "schemaTitle" in artifact_type:
        return artifact_type["schemaTitle"]
    return yaml.safe_load(artifact_type["instanceSchema"])["title"]


def _constant(param: dict):
    return param["runtimeValue"]["constant"]


def _pipeline_parameter(param: dict) -> str:
    """The pipeline (run-time) parameter a task parameter reads."""
    return param["componentInputParameter"]


def _class_defined(class_path: str) -> bool:
    """The executor class path names a class in this repository's sources (checked without importing)."""
    module, cls = class_path.rsplit(".", 1)
    parts = module.split(".")
    # pyproject's package-dir: privacy_audit.components / .pipelines live in the repository's components/, pipelines/.
    if parts[:2] in (["privacy_audit", "components"], ["privacy_audit", "pipelines"]):
        parts = parts[1:]
    path = ROOT.joinpath(*parts).with_suffix(".py")
    if not path.is_file():
        return False
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.ClassDef) and n.name == cls for n in tree.body)


@pytest.mark.slow
def test_compile_kfp_writes_pipeline_spec(compiled):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    path, spec = compiled
    proto = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(spec, proto)  # strict: an unknown field fails here
    assert proto.pipeline_info.name == "privacy-audit"
    assert proto.default_pipeline_root == PIPELINE_ROOT
    # Schema 2.1: parameters as runtimeValue.constant, which is what the KFP 2.x backend resolves.
    assert proto.schema_version == "2.1.0"

    tasks = spec["root"]["dag"]["tasks"]
    expected = {"CsvExampleGen", "PrivacyReportGenerator"} | {
        _task(c, v) for c in ("DPTrainer", "MembershipInferenceEvaluator") for v in VARIANTS}
    assert set(tasks) == expected
    # KFP runs each task as an Argo DAG task of the same name: only letters, digits and '-'.
    for name, task in tasks.items():
        assert ARGO_NAME.match(name) and task["taskInfo"]["name"] == name, name
        assert task["componentRef"]["name"] in spec["components"], name
    assert all(ARGO_NAME.match(n) for n in spec["components"])
    assert all(ARGO_NAME.match(n) for n in spec["deploymentSpec"]["executors"])

    # Executors: the project's image, TFX's KubeflowV2 entry point, our executor classes.
    for name in tasks:
        container = _container(spec, name)
        assert container["image"] == IMAGE, name
        assert container["command"] == ENTRYPOINT, name
        args = container["args"]
        assert args[args.index("--json_serialized_invocation_args") + 1] == "{{$}}", name
        # The inputs spec tells the entry point each parameter's type (ints stay ints).
        assert "--json_serialized_inputs_spec_args" in args, name
        class_path = args[args.index("--executor_class_path") + 1]
        component = name.split("-")[0]
        if component in EXECUTORS:
            assert class_path == EXECUTORS[component], name
            assert _class_defined(class_path), class_path
        # Every parameter is a compiled constant or a pipeline parameter the root declares.
        for param in tasks[name].get("inputs", {}).get("parameters", {}).values():
            assert ("constant" in param.get("runtimeValue", {})) != (param.get("componentInputParameter") in
                                                                    spec["root"]["inputDefinitions"]["parameters"])

    # Component interfaces: the namespaced custom artifact types.
    _, report = _task_component(spec, "PrivacyReportGenerator")
    assert _title(report["outputDefinitions"]["artifacts"]["report"]["artifactType"]) == "privacy_audit.PrivacyReport"
    in_types = {k: _title(a["artifactType"]) for k, a in report["inputDefinitions"]["artifacts"].items()}
    assert in_types == {"attack_results": "privacy_audit.MembershipInferenceResults",
                        "attack_results_1": "privacy_audit.MembershipInferenceResults",
                        "blessings": "tfx.ModelBlessing", "blessings_1": "tfx.ModelBlessing",
                        "ledgers": "tfx.ModelRun", "ledgers_1": "tfx.ModelRun"}
    _, evaluator = _task_component(spec, EVALUATOR_DP)
    assert {k: _title(a["artifactType"]) for k, a in evaluator["outputDefinitions"]["artifacts"].items()} == {
        "attack_results": "privacy_audit.MembershipInferenceResults", "blessing": "tfx.ModelBlessing"}

    # DAG edges: ExampleGen → trainer → evaluator → report, per variant.
    def source(task_name, key):
        ref = tasks[task_name]["inputs"]["artifacts"][key]["taskOutputArtifact"]
        return ref["producerTask"], ref["outputArtifactKey"]

    report_sources = {source("PrivacyReportGenerator", k)
                      for k in tasks["PrivacyReportGenerator"]["inputs"]["artifacts"]}
    for v in VARIANTS:
        trainer, evaluator_task = _task("DPTrainer", v), _task("MembershipInferenceEvaluator", v)
        assert source(trainer, "examples") == ("CsvExampleGen", "examples")
        assert source(evaluator_task, "model") == (trainer, "model")
        assert source(evaluator_task, "model_run") == (trainer, "model_run")
        assert source(evaluator_task, "examples") == ("CsvExampleGen", "examples")
        assert {(evaluator_task, "attack_results"), (evaluator_task, "blessing"), (trainer, "model_run")} <= report_sources
        assert trainer in tasks[evaluator_task]["dependentTasks"]
        assert {trainer, evaluator_task} <= set(tasks["PrivacyReportGenerator"]["dependentTasks"])
        assert _constant(tasks[trainer]["inputs"]["parameters"]["model_variant"]) == v
        assert _constant(tasks[evaluator_task]["inputs"]["parameters"]["model_variant"]) == v
    assert len(report_sources) == 3 * len(VARIANTS)
    # The DP variant is private at its ε; the baseline is not. On Kubeflow the report has no MLMD SQLite path.
    dp = tasks[TRAINER_DP]["inputs"]["parameters"]
    assert json.loads(_constant(dp["recipe"]))["private"] is True
    assert _pipeline_parameter(dp["target_epsilon"]) == TARGET_EPSILON_DP
    assert json.loads(_constant(tasks[_task("DPTrainer", "non_private")]["inputs"]["parameters"]["recipe"]))[
        "private"] is False
    assert "metadata_sqlite_path" not in tasks["PrivacyReportGenerator"]["inputs"].get("parameters", {})
    # The default data is the digits baked into the image, as the data_root parameter's default.
    gen = tasks["CsvExampleGen"]["inputs"]["parameters"]
    assert _pipeline_parameter(gen["input_base"]) == "data_root"
    assert proto.root.input_definitions.parameters["data_root"].default_value.string_value == \
        "/opt/privacy-audit/data/digits"


@pytest.mark.slow
def test_compiled_spec_carries_parameters_resources_and_caching(compiled):
    """The run-time parameters with today's values as defaults, the containers' resource requests (defaults plus
    the --resource flags, converted to the units of KFP's ResourceSpec by hand here) and per-task caching, read
    through the kfp-pipeline-spec protos."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    from privacy_audit.pipelines.run import DEFAULTS

    _, spec = compiled
    proto = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(spec, proto)
    declared = proto.root.input_definitions.parameters
    T = pipeline_spec_pb2.ParameterType
    expected = {"data_root": (T.STRING, "/opt/privacy-audit/data/digits"),
                "epochs": (T.NUMBER_INTEGER, DEFAULTS["epochs"]), "max_auc": (T.NUMBER_DOUBLE, 1.0),
                "max_attacker_advantage": (T.NUMBER_DOUBLE, 1.0),
                "max_epsilon_lower_bound": (T.NUMBER_DOUBLE, 100.0),
                TARGET_EPSILON_DP: (T.NUMBER_DOUBLE, DP_VARIANT.target_epsilon)}
    assert set(declared) == set(expected)
    for name, (ptype, default) in expected.items():
        assert declared[name].parameter_type == ptype, name
        value = json_format.MessageToDict(declared[name].default_value)
        assert value == default, name
        assert declared[name].is_optional and declared[name].description, name

    tasks = spec["root"]["dag"]["tasks"]
    uses = {name: {k: _pipeline_parameter(p) for k, p in t["inputs"].get("parameters", {}).items()
                   if "componentInputParameter" in p} for name, t in tasks.items()}
    gate = {k: k for k in ("max_auc", "max_attacker_advantage", "max_epsilon_lower_bound")}
    assert uses == {"CsvExampleGen": {"input_base": "data_root"},
                    _task("DPTrainer", "non_private"): {"epochs": "epochs"},
                    TRAINER_DP: {"epochs": "epochs", "target_epsilon": TARGET_EPSILON_DP},
                    _task("MembershipInferenceEvaluator", "non_private"): gate, EVALUATOR_DP: gate,
                    "PrivacyReportGenerator": {}}

    deployment = pipeline_spec_pb2.PipelineDeploymentConfig()
    json_format.ParseDict(spec["deploymentSpec"], deployment)
    evaluator = dict(cpu_request=2, cpu_limit=4, memory_request=4 * GIB / GB, memory_limit=8 * GIB / GB)
    want = {"CsvExampleGen": dict(cpu_request=1, memory_request=2 * GIB / GB),
            "DPTrainer": dict(cpu_request=2, memory_request=4 * GIB / GB, memory_limit=16 * GIB / GB),
            "MembershipInferenceEvaluator": evaluator,
            "PrivacyReportGenerator": dict(cpu_request=0.5, cpu_limit=0.5, memory_request=GIB / GB)}
    for name, task in tasks.items():
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        res = deployment.executors[label].container.resources
        fields = {f.name: v for f, v in res.ListFields() if f.name != "accelerator"}
        assert fields == pytest.approx(want[name.split("-")[0]]), name
        if name.startswith("DPTrainer"):
            assert (res.accelerator.type, res.accelerator.count) == ("nvidia.com/gpu", 1), name
        else:
            assert not res.HasField("accelerator"), name
        # Caching on for all but the report: a scheduled run always writes a fresh report.
        assert proto.root.dag.tasks[name].caching_options.enable_cache == (name != "PrivacyReportGenerator"), name


def test_reference_models_follow_their_variants_parameters_and_may_use_gpus(tmp_path, capsys):
    """Variants with different epochs get one epochs parameter each; the reference models read their variant's
    epochs and ε parameters, and ReferenceModelTrainer takes GPUs."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    from privacy_audit.pipelines import cli

    config = tmp_path / "audit.yaml"
    config.write_text("reference_models: 2\nmax_auc: 0.65\nvariants:\n"
                      "  - {name: base, private: false, epochs: 3}\n"
                      "  - {name: dp_eps2, private: true, target_epsilon: 2.0, epochs: 5}\n")
    out = tmp_path / "pipeline.yaml"
    assert cli.main(["compile-kfp", "--output", str(out), "--image", IMAGE, "--config", str(config),
                     "--resource", "ReferenceModelTrainer.gpu_count=2",
                     "--resource", "ReferenceModelTrainer.gpu_type=nvidia.com/gpu"]) == 0, capsys.readouterr().err
    spec = yaml.safe_load(out.read_text())
    proto = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(spec, proto)
    defaults = {k: json_format.MessageToDict(p.default_value)
                for k, p in proto.root.input_definitions.parameters.items()}
    assert defaults == {"data_root": "/opt/privacy-audit/data/digits", "epochs_base": 3, "epochs_dp_eps2": 5,
                        "target_epsilon_dp_eps2": 2.0, "max_auc": 0.65, "max_attacker_advantage": 1.0,
                        "max_epsilon_lower_bound": 100.0}
    tasks = spec["root"]["dag"]["tasks"]
    refs = tasks["ReferenceModelTrainer-dp-eps2"]["inputs"]["parameters"]
    assert _pipeline_parameter(refs["epochs"]) == "epochs_dp_eps2"
    assert _pipeline_parameter(refs["target_epsilon"]) == "target_epsilon_dp_eps2"
    assert _pipeline_parameter(tasks["ReferenceModelTrainer-base"]["inputs"]["parameters"]["epochs"]) == "epochs_base"
    for name in ("ReferenceModelTrainer-base", "ReferenceModelTrainer-dp-eps2"):
        resources = _container(spec, name)["resources"]
        assert resources["accelerator"] == {"type": "nvidia.com/gpu", "count": "2"}, name
    assert "accelerator" not in _container(spec, "DPTrainer-dp-eps2")["resources"]


def test_argo_safe_names_rename_every_reference_and_refuse_collisions():
    from privacy_audit.pipelines.kubeflow import argo_safe_names

    def spec(*variants):
        tasks = {"Gen": {"taskInfo": {"name": "Gen"}, "componentRef": {"name": "Gen"}}}
        comps = {"Gen": {"executorLabel": "Gen_executor"}}
        for v in variants:
            tasks[f"T.{v}"] = {"taskInfo": {"name": f"T.{v}"}, "componentRef": {"name": f"T.{v}"},
                               "dependentTasks": ["Gen"],
                               "inputs": {"artifacts": {"x": {"taskOutputArtifact": {"producerTask": "Gen",
                                                                                     "outputArtifactKey": "x"}}}}}
            comps[f"T.{v}"] = {"executorLabel": f"T.{v}_executor"}
        tasks["Report"] = {"taskInfo": {"name": "Report"}, "componentRef": {"name": "Report"},
                           "dependentTasks": [f"T.{v}" for v in variants],
                           "inputs": {"artifacts": {f"r{i}": {"taskOutputArtifact": {"producerTask": f"T.{v}"}}
                                                    for i, v in enumerate(variants)}}}
        comps["Report"] = {"executorLabel": "Report_executor"}
        execs = {c["executorLabel"]: {"container": {}} for c in comps.values()}
        return {"root": {"dag": {"tasks": tasks}}, "components": comps, "deploymentSpec": {"executors": execs}}

    s = spec("dp_eps3", "non_private")
    assert argo_safe_names(s)["T.dp_eps3"] == "T-dp-eps3"
    tasks = s["root"]["dag"]["tasks"]
    assert set(tasks) == {"Gen", "T-dp-eps3", "T-non-private", "Report"}
    assert tasks["Report"]["dependentTasks"] == ["T-dp-eps3", "T-non-private"]
    assert {a["taskOutputArtifact"]["producerTask"] for a in tasks["Report"]["inputs"]["artifacts"].values()} == {
        "T-dp-eps3", "T-non-private"}
    assert tasks["T-dp-eps3"]["taskInfo"]["name"] == "T-dp-eps3"
    assert tasks["T-dp-eps3"]["componentRef"]["name"] == "T-dp-eps3"
    assert s["components"]["T-dp-eps3"]["executorLabel"] == "T-dp-eps3-executor"
    assert set(s["deploymentSpec"]["executors"]) == {c["executorLabel"] for c in s["components"].values()}
    with pytest.raises(ValueError, match="both become 'T-dp-1'"):
        argo_safe_names(spec("dp_1", "dp-1"))


def test_compile_kfp_output_directory_is_an_error(tmp_path, capsys):
    from privacy_audit.pipelines import cli

    assert cli.main(["compile-kfp", "--output", str(tmp_path), "--image", IMAGE]) == 2
    err = capsys.readouterr().err
    assert "compile-kfp: error:" in err and "is a directory" in err and str(tmp_path) in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, message", [
    (["--resource", "DPTrainer.cpu_request=-1"], "resources: DPTrainer.cpu_request = '-1' is negative"),
    (["--resource", "MembershipInferenceEvaluator.memory_limit=-2Gi"],
     "MembershipInferenceEvaluator.memory_limit = '-2Gi' is negative"),
    (["--resource", "DPTrainer.memory_request=lots"], "DPTrainer.memory_request = 'lots' is not a Kubernetes quantity"),
    (["--resource", "MembershipInferenceEvaluator.gpu_count=1"],
     "MembershipInferenceEvaluator cannot use a GPU (only DPTrainer and ReferenceModelTrainer"),
    (["--resource", "ReferenceModelTrainer.gpu_count=-1"], "ReferenceModelTrainer.gpu_count = '-1' must be a whole"),
    (["--resource", "Trainer.cpu_request=1"], "unknown component kind 'Trainer'; valid: ExampleGen, DPTrainer"),
    (["--resource", "DPTrainer.cpus=1"], "unknown key DPTrainer.cpus; valid: cpu_request"),
    (["--resource", "DPTrainer.memory_request=16Gi", "--resource", "DPTrainer.memory_limit=8Gi"],
     "DPTrainer.memory_request (16Gi) exceeds DPTrainer.memory_limit (8Gi)"),
    (["--resource", "DPTrainer=2"], "expected KIND.KEY=VALUE"),
    (["--image", "registry.example.com/privacy audit:1"], "contains whitespace"),
    (["--image", "registry.example.com:5000/privacy-audit"], "has no tag: give REGISTRY/NAME:TAG"),
    (["--image", "Registry.example.com/Privacy-Audit:1"], "is not a valid image name"),
    (["--config", "{config}"], "resources: PrivacyReportGenerator cannot use a GPU"),
])
def test_compile_kfp_bad_input_is_one_line_error(flags, message, tmp_path, capsys):
    from privacy_audit.pipelines import cli

    config = tmp_path / "audit.yaml"
    config.write_text("resources:\n  PrivacyReportGenerator: {gpu_count: 1}\n")
    out = tmp_path / "out" / "pipeline.yaml"
    flags = [f.format(config=config) for f in flags]
    args = ["compile-kfp", "--output", str(out)] + (["--image", IMAGE] if "--image" not in flags else []) + flags
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "compile-kfp: error:" in err and message in err and "\n" not in err, err
    assert not out.exists()


def test_image_check_accepts_tags_and_digests_and_warns_on_latest():
    from privacy_audit.pipelines.kubeflow import check_image

    assert check_image("registry.example.com:5000/team/privacy-audit:1.16-2") is None
    assert check_image("privacy-audit:v3") is None
    assert check_image("gcr.io/p/privacy-audit@sha256:" + "ab" * 32) is None
    warning = check_image("registry.example.com/privacy-audit:latest")
    assert warning.startswith("warning:") and "'latest'" in warning


def test_resources_convert_kubernetes_quantities_and_follow_the_beam_runner():
    from privacy_audit.pipelines.kubeflow import resolve_resources

    r = resolve_resources({"DPTrainer": {"cpu_request": "500m", "cpu_limit": 3, "memory_request": "512Mi",
                                         "memory_limit": "2G", "gpu_count": 2, "gpu_type": "amd.com/gpu"}}, [])
    assert r["DPTrainer"] == {"cpuRequest": 0.5, "cpuLimit": 3.0, "memoryRequest": pytest.approx(512 * 2 ** 20 / GB),
                              "memoryLimit": 2.0, "accelerator": {"type": "amd.com/gpu", "count": "2"}}
    # The evaluator's Beam work: in its pod on the DirectRunner, elsewhere with a distributed runner.
    direct = resolve_resources(None, ["--direct_num_workers=2"])["MembershipInferenceEvaluator"]
    remote = resolve_resources(None, ["--runner=DataflowRunner", "--project=p"])["MembershipInferenceEvaluator"]
    assert direct == {"cpuRequest": 2.0, "cpuLimit": 4.0, "memoryRequest": pytest.approx(4 * GIB / GB),
                      "memoryLimit": pytest.approx(8 * GIB / GB)}
    assert remote == {"cpuRequest": 1.0, "memoryRequest": pytest.approx(2 * GIB / GB)}
    assert resolve_resources(None, ["--runner=DirectRunner"])["MembershipInferenceEvaluator"] == direct
    assert "accelerator" not in resolve_resources({"DPTrainer": {"gpu_count": 0}}, [])["DPTrainer"]


def _custom_type_titles(spec) -> set:
    titles = set()
    for comp in spec["components"].values():
        for side in ("inputDefinitions", "outputDefinitions"):
            for a in comp.get(side, {}).get("artifacts", {}).values():
                titles.add(_title(a["artifactType"]))
    return {t for t in titles if not t.startswith("tfx.")}


@pytest.mark.slow
def test_custom_artifact_types_are_importable_in_the_image(compiled):
    """TFX's KubeflowV2 entry point rebuilds each input/output artifact by importing its schema title as a
    class path ("privacy_audit.PrivacyReport" → module privacy_audit, class PrivacyReport); so that module
    must exist, define or re-export the classes, and be installed in the image. Checked statically here
    (no docker build on CI); the entry-point tests below exercise the import for real."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    import setuptools

    _, spec = compiled
    titles = _custom_type_titles(spec)
    # The blessing is TFX's standard ModelBlessing (what Pusher checks), not a custom type.
    assert titles == {"privacy_audit.MembershipInferenceResults", "privacy_audit.PrivacyReport"}
    module = "privacy_audit"
    source = ROOT / module / "__init__.py" if (ROOT / module).is_dir() else ROOT / f"{module}.py"
    assert source.is_file(), (
        f"no top-level module {module!r} in the repository: on Kubeflow the tasks fail with "
        f"'ImportError: Could not import {sorted(titles)[0]}'. Add {module}.py (or {module}/__init__.py) "
        "re-exporting the custom artifact classes, ship it in pyproject.toml and deploy/Dockerfile")
    # The entry point resolves each title as module attribute (privacy_audit loads them lazily).
    import importlib

    namespace = importlib.import_module(module)
    missing = {t for t in titles if getattr(getattr(namespace, t.split(".", 1)[1], None), "TYPE_NAME", None) != t}
    assert not missing, f"{source} does not provide {sorted(missing)}"

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    st = cfg.get("tool", {}).get("setuptools", {})
    shipped = set(st.get("py-modules", []))
    find = st.get("packages", {}).get("find") if isinstance(st.get("packages"), dict) else None
    if find is not None:
        shipped |= set(setuptools.find_packages(where=str(ROOT), include=find.get("include", ["*"]),
                                                exclude=find.get("exclude", [])))
    elif isinstance(st.get("packages"), list):
        shipped |= set(st["packages"])
    assert module in shipped, f"pyproject.toml does not install {module!r} (installed: {sorted(shipped)})"

    copies = [line.split()[1:-1] for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
              if line.strip().upper().startswith("COPY ")]
    sources = {src.rstrip("/") for srcs in copies for src in srcs if not src.startswith("--")}
    assert sources & {".", module, f"{module}.py"}, (
        f"deploy/Dockerfile does not COPY {module} into the image (COPY sources: {sorted(sources)}), so "
        "`pip install .` there cannot install it")


# --------------------------------------------------------------------------------------------------
# deploy/'s environment: the kfp SDK


def _find_base_python():
    for name in ("python3.11", "python3.12", "python3"):
        exe = shutil.which(name)
        if not exe:
            continue
        ok = subprocess.run([exe, "-c", "import sys, venv; assert sys.version_info >= (3, 9)"],
                            capture_output=True).returncode == 0
        if ok:
            return exe
    return None


@pytest.fixture(scope="module")
def kfp_python(request):
    """deploy/.venv-kfp's python. When it is missing, the README's two commands create it (30-60 s), except
    when slow tests are deselected (-m "not slow"): then the tests using it are skipped."""
    py = DEPLOY_VENV / "bin" / "python"
    if py.exists():
        probe = subprocess.run([str(py), "-c", "import kfp, kfp.pipeline_spec"], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"{DEPLOY_VENV} exists but cannot import kfp ({probe.stderr.strip()[-300:]}); "
                        "remove it, or reinstall deploy/requirements.txt into it")
        return str(py)
    if "not slow" in (request.config.getoption("-m") or ""):
        pytest.skip(f"{DEPLOY_VENV} is missing and creating it takes about a minute (slow tests deselected); "
                    "create it: python3 -m venv deploy/.venv-kfp && "
                    "deploy/.venv-kfp/bin/pip install -r deploy/requirements.txt")
    base = _find_base_python()
    if base is None:
        pytest.skip("no Python >= 3.9 with the venv module on the PATH to create deploy/.venv-kfp")
    steps = [[base, "-m", "venv", str(DEPLOY_VENV)],
             [str(py), "-m", "pip", "install", "-q", "-r", str(ROOT / "deploy" / "requirements.txt")]]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            shutil.rmtree(DEPLOY_VENV, ignore_errors=True)
            pytest.skip(f"could not create deploy/.venv-kfp ({' '.join(step[:3])}...): {_tail(proc.stderr, 600)}")
    return str(py)


@pytest.mark.slow
def test_kfp_sdk_loads_compiled_package(kfp_python, compiled):
    path, spec = compiled
    proc = subprocess.run([kfp_python, str(ROOT / "deploy" / "submit.py"), "--dry-run", "--host", "http://unused",
                           "--package", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, _tail(proc.stderr)
    assert f"Loaded {path}: pipeline 'privacy-audit'" in proc.stdout

    proc = subprocess.run([kfp_python, str(ROOT / "deploy" / "check_package.py"), "--package", str(path),
                           "--image", IMAGE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + _tail(proc.stderr)
    summary = json.loads(proc.stdout)
    assert summary["problems"] == [] and summary["pipeline_name"] == "privacy-audit"
    assert summary["schema_version"] == "2.1.0"
    seen = summary["tasks"]
    assert set(seen) == set(spec["root"]["dag"]["tasks"])
    for name, t in seen.items():
        assert t["image"] == IMAGE and t["command"] == ENTRYPOINT
        if name.split("-")[0] in EXECUTORS:
            assert t["executor_class_path"] == EXECUTORS[name.split("-")[0]]
    assert seen["PrivacyReportGenerator"]["input_artifacts"]["attack_results_1"] == {
        "producer": EVALUATOR_DP, "output": "attack_results"}
    # The kfp SDK's own protos read the parameters' defaults, the resources and the caching options.
    params = summary["parameters"]
    assert params["max_auc"] == {"type": "NUMBER_DOUBLE", "default": 1.0}
    assert params[TARGET_EPSILON_DP] == {"type": "NUMBER_DOUBLE", "default": DP_VARIANT.target_epsilon}
    assert params["data_root"] == {"type": "STRING", "default": "/opt/privacy-audit/data/digits"}
    assert params["epochs"]["type"] == "NUMBER_INTEGER" and params["epochs"]["default"] == 40
    assert seen[TRAINER_DP]["pipeline_parameters"] == {"epochs": "epochs", "target_epsilon": TARGET_EPSILON_DP}
    dp = seen[TRAINER_DP]["resources"]
    assert dp["accelerator"] == {"type": "nvidia.com/gpu", "count": "1"}
    assert dp["memory_limit"] == pytest.approx(16 * GIB / GB) and dp["cpu_request"] == 2
    assert seen[EVALUATOR_DP]["resources"]["memory_request"] == pytest.approx(4 * GIB / GB)
    assert {n: t["cache"] for n, t in seen.items()} == {n: n != "PrivacyReportGenerator" for n in seen}


def _submit(kfp_python, *args, env=None):
    return subprocess.run([kfp_python, str(ROOT / "deploy" / "submit.py"), *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.slow
def test_submit_dry_run_prints_the_request_with_parameters(kfp_python, compiled):
    path, _ = compiled
    proc = _submit(kfp_python, "--dry-run", "--package", str(path), "--param", "max_auc=0.6", "--param", "epochs=3",
                   "--param", f"{TARGET_EPSILON_DP}=2", "--schedule", "0 0 3 * * 1")
    assert proc.returncode == 0, _tail(proc.stderr)
    request = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert request["method"] == "POST" and request["path"] == "/apis/v2beta1/recurringruns"
    body = request["body"]
    # Typed as the package declares them: the integer stays an integer, "2" becomes the number 2.0.
    assert body["runtime_config"]["parameters"] == {"max_auc": 0.6, "epochs": 3, TARGET_EPSILON_DP: 2.0}
    assert isinstance(body["runtime_config"]["parameters"]["epochs"], int)
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert body["max_concurrency"] == 1 and body["no_catchup"] is True and body["mode"] == "ENABLE"

    proc = _submit(kfp_python, "--dry-run", "--package", str(path))  # one run now, compiled defaults
    assert proc.returncode == 0, _tail(proc.stderr)
    request = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert request["path"] == "/apis/v2beta1/runs" and "trigger" not in request["body"]
    assert request["body"]["runtime_config"].get("parameters", {}) == {}


@pytest.mark.parametrize("args, message", [
    (["--param", "max_aux=0.6"], "the pipeline has no parameter 'max_aux'; it has: data_root, epochs, max_attacker"),
    (["--param", "max_auc=high"], "--param max_auc='high': max_auc takes a finite number"),
    (["--param", "max_auc=nan"], "max_auc takes a finite number"),
    (["--param", "epochs=1.5"], "--param epochs='1.5': epochs takes an integer"),
    (["--param", "epochs"], "expected NAME=VALUE"),
    (["--schedule", "0 3 * * 1"], "KFP cron expressions have 6 fields"),
    (["--package", "no_such.yaml"], "no_such.yaml: no such file"),
])
@pytest.mark.slow
def test_submit_bad_input_is_one_line_error(kfp_python, compiled, args, message):
    path, _ = compiled
    proc = _submit(kfp_python, "--dry-run", "--package", str(path), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "\n" not in err and err.startswith("submit.py: error:") and message in err, err
    assert "Traceback" not in proc.stderr and "POST" not in proc.stdout


class _FakeKfp(http.server.BaseHTTPRequestHandler):
    """The few KFP v2beta1 REST endpoints that kfp.Client uses to upload, run and schedule."""

    state: dict = {}

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, body, status=200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):  # noqa: N802
        url = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(url.query)
        s = self.state
        s["calls"].append(("GET", url.path))
        if url.path == "/apis/v2beta1/healthz":
            return self._reply({"multi_user": False})
        if url.path in ("/apis/v2beta1/pipelines", "/apis/v2beta1/experiments"):
            kind = url.path.rsplit("/", 1)[1]
            items = list(s[kind].values())
            if "filter" in q:
                for pred in json.loads(q["filter"][0]).get("predicates", []):
                    items = [i for i in items if i.get(pred["key"]) == pred.get("stringValue", pred.get("string_value"))]
            return self._reply({kind: items, "total_size": len(items)} if items else {})
        parts = url.path.split("/")
        if url.path.startswith("/apis/v2beta1/pipelines/") and parts[-1] == "versions":
            versions = [v for v in s["versions"] if v["pipeline_id"] == parts[-2]]
            if "created_at desc" in q.get("sort_by", [""])[0]:
                versions = versions[::-1]
            return self._reply({"pipeline_versions": versions, "total_size": len(versions)})
        s["unknown"].append(("GET", self.path))
        return self._reply({"error": "not found"}, 404)

    def do_POST(self):  # noqa: N802
        url = urllib.parse.urlparse(self.path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        body = self._body()
        s = self.state
        s["calls"].append(("POST", url.path))
        if url.path == "/apis/v2beta1/pipelines/upload":
            pid = f"pipeline-{len(s['pipelines']) + 1}"
            s["pipelines"][pid] = {"pipeline_id": pid, "display_name": q.get("name")}
            s["uploads"].append(body)
            self._new_version(pid, q.get("name"))  # uploading a pipeline creates its first version
            return self._reply(s["pipelines"][pid])
        if url.path == "/apis/v2beta1/pipelines/upload_version":
            if q.get("pipelineid") not in s["pipelines"]:
                return self._reply({"error": "no such pipeline"}, 404)
            s["uploads"].append(body)
            return self._reply(self._new_version(q["pipelineid"], q.get("name")))
        if url.path == "/apis/v2beta1/experiments":
            exp = json.loads(body)
            exp["experiment_id"] = f"experiment-{len(s['experiments']) + 1}"
            s["experiments"][exp["experiment_id"]] = exp
            return self._reply(exp)
        if url.path in ("/apis/v2beta1/runs", "/apis/v2beta1/recurringruns"):
            req = json.loads(body)
            key = "runs" if url.path.endswith("/runs") else "recurring_runs"
            s[key].append(req)
            ident = {"runs": "run_id", "recurring_runs": "recurring_run_id"}[key]
            return self._reply({**req, ident: f"{key}-{len(s[key])}"})
        s["unknown"].append(("POST", self.path))
        return self._reply({"error": "not found"}, 404)

    def _new_version(self, pipeline_id, name):
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": f"version-{len(self.state['versions']) + 1}",
                   "display_name": name}
        self.state["versions"].append(version)
        return version


@pytest.fixture
def fake_kfp():
    _FakeKfp.state = {k: [] for k in ("calls", "unknown", "uploads", "versions", "runs", "recurring_runs")}
    _FakeKfp.state.update(pipelines={}, experiments={})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeKfp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _FakeKfp.state
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_submit_runs_and_schedules_against_kfp_api(kfp_python, compiled, fake_kfp, tmp_path):
    path, _ = compiled
    host, state = fake_kfp
    submit = [kfp_python, str(ROOT / "deploy" / "submit.py"), "--host", host, "--package", str(path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KF_PIPELINES")}
    env["HOME"] = str(tmp_path)  # kfp.Client reads ~/.config/kfp/context.json

    # First submission: the pipeline is new; a run of its first version starts.
    proc = subprocess.run(submit + ["--run-name", "audit-now"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, _tail(proc.stderr)
    assert state["unknown"] == []
    assert len(state["pipelines"]) == 1 and len(state["uploads"]) == 1
    assert Path(path).read_bytes() in state["uploads"][0]  # the compiled file itself is uploaded
    [run] = state["runs"]
    assert run["display_name"] == "audit-now"
    assert run["pipeline_version_reference"] == {"pipeline_id": "pipeline-1", "pipeline_version_id": "version-1"}
    assert run["experiment_id"] == "experiment-1"
    assert "Run runs-1 started" in proc.stdout

    assert run["runtime_config"].get("parameters", {}) == {}  # the compiled defaults hold

    # Second submission, scheduled: a new version of the same pipeline, weekly, never overlapping, with parameters.
    scheduled = ["--schedule", "0 0 3 * * 1", "--pipeline-root", "gs://other/root", "--param", "max_auc=0.6",
                 "--param", "data_root=gs://data/this-week", "--run-name", "weekly"]
    proc = subprocess.run(submit + scheduled, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, _tail(proc.stderr)
    assert state["unknown"] == []
    assert len(state["pipelines"]) == 1 and len(state["versions"]) == 2 and len(state["experiments"]) == 1
    [job] = state["recurring_runs"]
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert int(job["max_concurrency"]) == 1 and job["no_catchup"] is True
    assert job["mode"] == "ENABLE"
    assert job["pipeline_version_reference"] == {"pipeline_id": "pipeline-1", "pipeline_version_id": "version-2"}
    assert job["runtime_config"]["pipeline_root"] == "gs://other/root"
    assert job["runtime_config"]["parameters"] == {"max_auc": 0.6, "data_root": "gs://data/this-week"}
    assert "max concurrency 1, no catch-up" in proc.stdout
    # --dry-run prints the body the client sent, but for the ids the server assigns on upload.
    dry = subprocess.run(submit + scheduled + ["--dry-run"], capture_output=True, text=True, timeout=120, env=env)
    assert dry.returncode == 0, _tail(dry.stderr)
    body = json.loads(dry.stdout[dry.stdout.index("{"):])["body"]
    ids = {"experiment_id": job["experiment_id"], "pipeline_version_reference": job["pipeline_version_reference"]}
    assert {**body, **ids} == job
    assert len(state["recurring_runs"]) == 1  # the dry run sent nothing


# --------------------------------------------------------------------------------------------------
# The compiled tasks' container entry point, run locally


def _local_store(spec, task_name, store: Path):
    """Overrides that point a task's compiled bucket paths (the report's audit history under the pipeline root)
    into the local stand-in for the bucket."""
    _, comp = _task_component(spec, task_name)
    declared = comp["inputDefinitions"].get("parameters", {})
    return {"history_uri": str(store / "audit_history")} if "history_uri" in declared else {}


def _resolve_parameters(spec, task, run_params):
    """A task's parameter values as KFP's driver resolves them: compiled constants, and pipeline parameters
    (`componentInputParameter`) from the run's values (`create_run(params=...)`) or the compiled defaults."""
    root = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    assert set(run_params or {}) <= set(root), f"unknown pipeline parameters {set(run_params) - set(root)}"
    values = {}
    for key, p in task["inputs"].get("parameters", {}).items():
        if "componentInputParameter" in p:
            name = p["componentInputParameter"]
            values[key] = (run_params or {}).get(name, root[name]["defaultValue"])
        else:
            values[key] = _constant(p)
    return values


def tasks_dp_params(spec):
    """The compiled parameters of the DP variant's trainer task."""
    return spec["root"]["dag"]["tasks"][TRAINER_DP]["inputs"]["parameters"]


def _executor_input(spec, task_name, inputs, outputs, output_file, overrides=None, run_params=None):
    """The ExecutorInput KFP's launcher passes as `{{$}}`, from the task's compiled spec.

    inputs: {input key: (uri, metadata)} for every input artifact of the task; outputs: {output key: uri}.
    run_params: the run's pipeline parameters ({name: value}, as `submit.py --param` gives them); overrides
    replace a task's compiled constants (e.g. a smaller batch).
    """
    task, comp = _task_component(spec, task_name)
    declared = comp["inputDefinitions"]
    wanted = set(task["inputs"].get("artifacts", {}))
    assert set(inputs) == wanted, f"{task_name} takes input artifacts {sorted(wanted)}"
    params = _resolve_parameters(spec, task, run_params)
    for k, v in (overrides or {}).items():
        assert k in declared["parameters"], k
        params[k] = v
    artifacts = {}
    for i, (key, (uri, metadata)) in enumerate(sorted(inputs.items())):
        artifacts[key] = {"artifacts": [{"name": str(1000 + i), "type": declared["artifacts"][key]["artifactType"],
                                         "uri": uri, "metadata": metadata}]}
    outs = {}
    for key, definition in comp["outputDefinitions"]["artifacts"].items():
        # KFP's launcher creates only the parent directory of each output artifact.
        Path(outputs[key]).parent.mkdir(parents=True, exist_ok=True)
        outs[key] = {"artifacts": [{"type": definition["artifactType"], "uri": outputs[key], "metadata": {}}]}
    executor_input = {"inputs": {"parameterValues": params, "artifacts": artifacts},
                      "outputs": {"artifacts": outs, "outputFile": str(output_file)}}
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    json_format.ParseDict(executor_input, pipeline_spec_pb2.ExecutorInput())  # well-formed for the launcher
    return executor_input


def _run_task(spec, task_name, executor_input, cwd, timeout=240, python=None):
    """Runs the task's compiled container command with `{{$}}` replaced, as KFP's launcher does; `python` is the
    image's interpreter (default: the main venv's)."""
    container = _container(spec, task_name)
    command = [(python or _main_python()) if c == "python" else c for c in container["command"]]
    args = [json.dumps(executor_input) if a == "{{$}}" else a for a in container["args"]]
    proc = subprocess.run(command + args, capture_output=True, text=True, env=_env(), timeout=timeout, cwd=str(cwd))
    assert proc.returncode == 0, f"{task_name} entry point failed:\n{_tail(proc.stderr, 5000)}"
    with open(executor_input["outputs"]["outputFile"]) as f:
        return json.load(f)


def _write_json(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


# Fixture values the report must carry through: (variant, epoch) → AUC of the worst slice.
REPORT_AUC = {("non_private", 2): 0.61, ("non_private", 4): 0.74, (DP, 2): 0.52, (DP, 4): 0.55}
REPORT_ACC = {"non_private": 0.97, DP: 0.88}
DP_EPSILON, DP_DELTA = 2.95, 1e-3


def _results_doc(variant, epoch, final):
    auc = REPORT_AUC[(variant, epoch)]
    results = []
    for sl, scale in (({"feature": "entire_dataset"}, 0.6), ({"feature": "class", "value": 3}, 1.0)):
        for attack, a in (("threshold", 0.5 + (auc - 0.5) * scale), ("logistic_regression", 0.5 + (auc - 0.5) * scale * 0.8)):
            adv = round(2 * (a - 0.5), 4)
            results.append({"slice": sl, "attack": attack, "n_members": 40, "n_nonmembers": 40,
                            "auc": round(a, 4), "attacker_advantage": adv, "ppv": 0.6,
                            "tpr_at_fpr": {"0.01": 0.05, "0.001": round(adv / 10, 4)},
                            "epsilon_lower_bound": 0.1, "roc": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, a, 1.0]}})
    return {"schema_version": 1,
            "metadata": {"model_variant": variant, "epoch": epoch, "is_final": final,
                         "accuracy_train": REPORT_ACC[variant] + 0.02, "accuracy_test": REPORT_ACC[variant],
                         "epsilon": DP_EPSILON if variant == DP else None},
            "results": results}


def _ledger_doc(variant):
    private = variant == DP
    return {"schema_version": 1, "model_variant": variant, "private": private, "sampling": "poisson",
            "poisson_guarantee_holds": True, "n_examples": 900, "expected_batch_size": 64,
            "sampling_probability": 64 / 900, "noise_multiplier": 1.3 if private else None,
            "l2_norm_clip": 1.0 if private else None, "delta": DP_DELTA if private else None, "accountant": "rdp",
            "events": [{"type": "poisson_sampled_gaussian", "sampling_probability": 64 / 900,
                        "noise_multiplier": 1.3, "steps": 60}] if private else [],
            "epochs": [{"epoch": e, "steps": 15 * e, "epsilon": (DP_EPSILON * e / 4) if private else None,
                        "train_loss": 1.0 / e, "train_accuracy": 0.8} for e in (1, 2, 3, 4)],
            "steps": 60, "epsilon": DP_EPSILON if private else None}


@pytest.mark.slow
def test_report_task_runs_through_kfp_entrypoint(compiled, tmp_path):
    _, spec = compiled
    store = tmp_path / "gcs"  # stands in for the pipeline root bucket
    inputs = {}
    for i, v in enumerate(VARIANTS):
        suffix = "" if i == 0 else f"_{i}"
        results = store / _task("MembershipInferenceEvaluator", v) / "attack_results"
        rel = [f"results/{v}_epoch_0002.json", f"results/{v}_final.json"]
        _write_json(results / rel[0], _results_doc(v, 2, False))
        _write_json(results / rel[1], _results_doc(v, 4, True))
        _write_json(results / "index.json", {"results": rel})
        ledger = store / _task("DPTrainer", v) / "model_run"
        _write_json(ledger / "ledger.json", _ledger_doc(v))
        blessing = store / _task("MembershipInferenceEvaluator", v) / "blessing"
        doc = {"blessed": v == DP, "thresholds": {"max_auc": 0.6},
               "failures": [] if v == DP else [{"slice": {"feature": "class", "value": 3},
                                                        "attack": "threshold", "metric": "auc", "value": 0.74,
                                                        "threshold": 0.6}]}
        if v == DP:
            doc["model_variant"] = v
        # non_private's blessing names its variant only in the artifact metadata (custom property), as KFP passes it.
        _write_json(blessing / "blessing.json", doc)
        inputs[f"attack_results{suffix}"] = (str(results), {"model_variant": v})
        inputs[f"ledgers{suffix}"] = (str(ledger), {"model_variant": v})
        inputs[f"blessings{suffix}"] = (str(blessing), {"model_variant": v, "blessed": float(v == DP)})
    report_uri = store / "PrivacyReportGenerator" / "report"
    output_file = tmp_path / "kfp_outputs" / "output_metadata.json"
    executor_input = _executor_input(spec, "PrivacyReportGenerator", inputs, {"report": str(report_uri)}, output_file,
                                     overrides=_local_store(spec, "PrivacyReportGenerator", store))
    assert executor_input["inputs"]["parameterValues"]["title"] == "Privacy audit"

    out = _run_task(spec, "PrivacyReportGenerator", executor_input, cwd=tmp_path)

    summary = json.loads((report_uri / "summary.json").read_text())
    rows = {r["name"]: r for r in summary["variants"]}
    assert set(rows) == set(VARIANTS)
    assert rows["non_private"]["private"] is False and rows["non_private"]["epsilon"] is None
    assert rows[DP]["private"] is True
    # ε is derived from the ledger's events (not its written copy), here checked against dp-accounting's RDP.
    assert rows[DP]["epsilon"] == pytest.approx(_rdp_epsilon(_ledger_doc(DP))) and rows[DP]["delta"] == DP_DELTA
    for v in VARIANTS:
        assert rows[v]["max_auc"] == pytest.approx(REPORT_AUC[(v, 4)])  # the final model's worst slice
        assert rows[v]["test_accuracy"] == pytest.approx(REPORT_ACC[v])
        assert rows[v]["max_attacker_advantage"] == pytest.approx(2 * (REPORT_AUC[(v, 4)] - 0.5), abs=1e-4)
    assert rows["non_private"]["blessed"] is False and rows[DP]["blessed"] is True
    assert summary["all_blessed"] is False
    html = (report_uri / "report.html").read_text()
    assert "Privacy audit" in html and "non_private" in html and DP in html
    assert any(p.suffix == ".png" for p in report_uri.iterdir())

    # The metadata file KFP's launcher reads back: the output artifact and its custom properties.
    [artifact] = out["artifacts"]["report"]["artifacts"]
    assert artifact["uri"] == str(report_uri)
    assert artifact["metadata"]["all_blessed"] == 0
    assert json.loads(artifact["metadata"]["variants"]) == list(VARIANTS)


# A tiny TFX Examples artifact: GZIP TFRecords of tf.Example, written without TensorFlow.

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _tf_example(features: dict) -> bytes:
    entries = b""
    for key, value in sorted(features.items()):
        if isinstance(value, int):
            feature = _ld(3, _ld(1, _varint(value)))  # Feature.int64_list.value (packed)
        else:
            vals = list(value)
            feature = _ld(2, _ld(1, struct.pack(f"<{len(vals)}f", *vals)))  # Feature.float_list.value (packed)
        entries += _ld(1, _ld(1, key.encode()) + _ld(2, feature))  # Features.feature map entry
    return _ld(1, entries)  # Example.features


def _tfrecord(records) -> bytes:
    import google_crc32c

    def masked(data: bytes) -> bytes:
        crc = google_crc32c.value(data)
        return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)

    out = b""
    for r in records:
        header = struct.pack("<Q", len(r))
        out += header + masked(header) + r + masked(r)
    return out


# The Examples artifact's properties as KFP passes them (ExampleGen's output metadata).
EXAMPLES_METADATA = {"split_names": '["train", "eval"]', "span": 0.0, "version": 0.0}


def _write_examples(uri: Path, n_train: int, n_eval: int) -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rows = [_tf_example({**{f"pixel_{j:02d}": [x[i, j] / 16.0] for j in range(64)}, "label": int(y[i])})
            for i in range(n_train + n_eval)]
    for split, part in (("train", rows[:n_train]), ("eval", rows[n_train:])):
        d = uri / f"Split-{split}"
        d.mkdir(parents=True)
        (d / "data_tfrecord-00000-of-00001.gz").write_bytes(gzip.compress(_tfrecord(part)))


def _assert_gated_at(blessing, final_results, max_auc):
    """The blessing fails exactly the final model's results whose AUC exceeds max_auc (AUC and advantage are at
    most 1 and no finite audit proves ε >= 100, so the other default thresholds fail nothing)."""
    over = sorted((json.dumps(r["slice"], sort_keys=True), r["attack"]) for r in final_results["results"]
                  if r["auc"] > max_auc)
    failed = sorted((json.dumps(f["slice"], sort_keys=True), f["attack"]) for f in blessing["failures"])
    assert failed == over
    assert all(f["metric"] == "auc" and f["threshold"] == max_auc for f in blessing["failures"])
    assert blessing["blessed"] is (not over)


@pytest.mark.slow
def test_dp_trainer_then_evaluator_tasks_run_through_kfp_entrypoint(compiled, tmp_path):
    _, spec = compiled
    store = tmp_path / "gcs"
    examples = store / "CsvExampleGen" / "examples"
    _write_examples(examples, n_train=96, n_eval=32)
    model_uri, run_uri = store / TRAINER_DP / "model", store / TRAINER_DP / "model_run"
    output_file = tmp_path / "kfp_outputs" / "output_metadata.json"
    # As compiled (DP, Poisson sampling, the variant's model), but one short epoch (the run's `epochs`
    # parameter) and a smaller batch.
    executor_input = _executor_input(
        spec, TRAINER_DP,
        {"examples": (str(examples), EXAMPLES_METADATA)},
        {"model": str(model_uri), "model_run": str(run_uri)}, output_file,
        overrides={"recipe": json.dumps({**json.loads(_constant(tasks_dp_params(spec)["recipe"])), "batch_size": 16,
                                         "checkpoint_every": 1}, sort_keys=True)}, run_params={"epochs": 1})

    out = _run_task(spec, TRAINER_DP, executor_input, cwd=tmp_path)

    ledger = json.loads((run_uri / "ledger.json").read_text())
    assert ledger["model_variant"] == DP and ledger["private"] is True
    assert ledger["n_examples"] == 96 and ledger["expected_batch_size"] == 16
    assert ledger["sampling"] == "poisson" and len(ledger["epochs"]) == 1
    # σ was calibrated for the compiled default target ε over the planned steps; the steps that ran give it.
    assert 0 < ledger["epsilon"] <= DP_VARIANT.target_epsilon + 1e-6 and ledger["noise_multiplier"] > 0
    info = json.loads((model_uri / "model_info.json").read_text())
    assert info["model_variant"] == DP and info["label_key"] == "label" and info["private"] is True
    assert info["input_features"] == [f"pixel_{j:02d}" for j in range(64)]
    assert (model_uri / "keras" / "model.keras").is_file()
    assert (model_uri / "Format-Serving" / "saved_model.pb").is_file()
    index = json.loads((model_uri / "checkpoints" / "index.json").read_text())
    assert [c["epoch"] for c in index["checkpoints"]] == [1]

    # ε and the variant travel to KFP (and on to the evaluator) as the Model artifact's metadata.
    [model] = out["artifacts"]["model"]["artifacts"]
    assert model["uri"] == str(model_uri)
    assert model["metadata"]["model_variant"] == DP
    assert model["metadata"]["epsilon"] == pytest.approx(ledger["epsilon"], rel=1e-9)
    assert out["artifacts"]["model_run"]["artifacts"][0]["metadata"]["model_variant"] == DP

    # The evaluator task on the trainer's outputs, with the metadata KFP hands downstream.
    results_uri = store / EVALUATOR_DP / "attack_results"
    blessing_uri = store / EVALUATOR_DP / "blessing"
    executor_input = _executor_input(
        spec, EVALUATOR_DP,
        {"examples": (str(examples), EXAMPLES_METADATA),
         "model": (str(model_uri), model["metadata"]),
         "model_run": (str(run_uri), out["artifacts"]["model_run"]["artifacts"][0]["metadata"])},
        {"attack_results": str(results_uri), "blessing": str(blessing_uri)},
        tmp_path / "kfp_outputs_evaluator" / "output_metadata.json", run_params={"max_auc": 0.5})

    out = _run_task(spec, EVALUATOR_DP, executor_input, cwd=tmp_path)

    index = json.loads((results_uri / "index.json").read_text())
    assert index["results"] == [f"results/{DP}_epoch_0001.json", f"results/{DP}_final.json"]
    final = json.loads((results_uri / "results" / f"{DP}_final.json").read_text())
    assert final["metadata"]["model_variant"] == DP and final["metadata"]["is_final"] is True
    assert final["metadata"]["epsilon"] == pytest.approx(ledger["epsilon"])
    attacks = {(r["slice"]["feature"], r["attack"]) for r in final["results"]}
    assert {("entire_dataset", "threshold"), ("entire_dataset", "logistic_regression")} <= attacks
    assert all(0.0 <= r["auc"] <= 1.0 for r in final["results"])
    # The gate at the run's max_auc (0.5, not the compiled 1.0); the other thresholds at their defaults.
    blessing = json.loads((blessing_uri / "blessing.json").read_text())
    assert blessing["thresholds"] == {"auc": 0.5, "attacker_advantage": 1.0, "epsilon_lower_bound": 100.0}
    _assert_gated_at(blessing, final, max_auc=0.5)
    assert blessing["model_variant"] == DP
    [b] = out["artifacts"]["blessing"]["artifacts"]
    assert b["metadata"]["blessed"] == int(blessing["blessed"]) and b["metadata"]["model_variant"] == DP


# --------------------------------------------------------------------------------------------------
# The image, checked without a Docker engine: its Python environment built from deploy/install_steps.sh (the
# script the Dockerfile runs) in a fresh venv, then every compiled task's command line run against it.

INSTALL_STEPS = ROOT / "deploy" / "install_steps.sh"
# The venv with the lock installed is reused while the lock and the install steps stay the same (CI may cache
# this directory); the project itself is reinstalled from a fresh build context on every run.
IMAGE_VENV_CACHE = Path(os.environ.get("PRIVACY_AUDIT_IMAGE_VENV_CACHE") or Path.home() / ".cache" / "privacy-audit")


def _dockerfile():
    """deploy/Dockerfile's COPY and RUN lines in order, each with the WORKDIR it runs in, and the last WORKDIR
    (where the tasks start): ([(instruction, arguments, workdir)], task workdir)."""
    workdir, steps = "/", []
    for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        op = words[0].upper()
        if op == "WORKDIR":
            workdir = posixpath.join(workdir, words[1])
        elif op in ("COPY", "RUN"):
            steps.append((op, line.split(None, 1)[1], workdir))
    return steps, workdir


def _image_tree(root: Path):
    """Mirrors the image's files under root as the Dockerfile's COPY lines place them (a package the Dockerfile
    forgets to copy is missing here too), and parses its one RUN line, which must only call the install steps.

    Returns the image's (source dir, digits dir) as the RUN line names them, and the mirror's paths:
    {"script", "source", "digits", "run_cwd", "task_cwd"}.
    """
    steps, task_workdir = _dockerfile()

    def inside(path: str) -> Path:
        return root / path.lstrip("/")

    for op, args, workdir in steps:
        if op != "COPY":
            continue
        *sources, target = args.split()
        dest = inside(posixpath.join(workdir, target))
        for src in sources:
            to = dest / Path(src).name if target.endswith("/") or len(sources) > 1 else dest
            to.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / src).is_dir():
                shutil.copytree(ROOT / src, to, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(ROOT / src, to)
    runs = [(args, workdir) for op, args, workdir in steps if op == "RUN"]
    assert len(runs) == 1, f"deploy/Dockerfile must install through deploy/install_steps.sh only, RUN lines: {runs}"
    words, workdir = runs[0][0].split(), runs[0][1]
    assert "deploy/install_steps.sh" in words and len(words) == words.index("deploy/install_steps.sh") + 3, words
    at = words.index("deploy/install_steps.sh")
    assert words[at - 1] == "sh" and all("=" in w for w in words[:at - 1]), words  # env settings, then the script
    source, digits = words[at + 1], words[at + 2]
    paths = {"script": inside(posixpath.join(workdir, words[at])), "source": inside(source), "digits": inside(digits),
             "run_cwd": inside(workdir), "task_cwd": inside(task_workdir)}
    paths["task_cwd"].mkdir(parents=True, exist_ok=True)
    return (source, digits), paths


def _python310():
    import glob

    roots = [os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")]
    candidates = sorted(glob.glob(os.path.join(roots[0], "versions", "3.10*", "bin", "python")))
    candidates += [shutil.which("python3.10") or ""]
    for exe in filter(None, candidates):
        if subprocess.run([exe, "-c", "import sys, venv; assert sys.version_info[:2] == (3, 10)"],
                          capture_output=True).returncode == 0:
            return exe
    return None


def _image_venv_key() -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in (ROOT / "requirements.lock", INSTALL_STEPS):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def image_env(tmp_path_factory):
    """The image's environment, built by the Dockerfile's own install steps in a (cached) fresh venv:
    {"python", "digits", "task_cwd", ...} (the paths of _image_tree's mirror of the image)."""
    from privacy_audit.pipelines.kubeflow import IMAGE_DIGITS_DIR

    (source, digits), paths = _image_tree(tmp_path_factory.mktemp("image") / "root")
    assert paths["source"] == paths["run_cwd"] and digits == IMAGE_DIGITS_DIR, (source, digits)
    venv = IMAGE_VENV_CACHE / f"image-venv-{_image_venv_key()}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        base = _python310()
        if base is None:
            pytest.skip("no Python 3.10 (the image's) to build its environment in")
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    else:  # as in a fresh image: the project comes from the steps below, never from an earlier run
        subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "privacy-audit"], capture_output=True)
    env = {**os.environ, "PYTHON": str(python), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(["sh", str(paths["script"]), str(paths["source"]), str(paths["digits"])],
                          capture_output=True, text=True, env=env, timeout=3600, cwd=str(paths["run_cwd"]))
    assert proc.returncode == 0, f"the image's install steps failed:\n{_tail(proc.stdout, 1500)}\n{_tail(proc.stderr)}"
    (venv / ".complete").touch()
    # Where the tasks start (`python -m` puts that directory first on sys.path), the installed package is imported.
    probe = subprocess.run([str(python), "-c", "import privacy_audit.components as c; print(c.__file__)"],
                           capture_output=True, text=True, cwd=str(paths["task_cwd"]), env=_env())
    assert probe.returncode == 0 and probe.stdout.startswith(str(venv)), probe.stdout + probe.stderr
    return {"python": str(python), **paths}


def _task_order(spec):
    """Task names in an order that respects dependentTasks."""
    tasks, done = spec["root"]["dag"]["tasks"], []
    while len(done) < len(tasks):
        ready = sorted(n for n, t in tasks.items() if n not in done and set(t.get("dependentTasks", [])) <= set(done))
        assert ready, "dependency cycle"
        done += ready
    return done


def _count_tfrecords(directory: Path) -> int:
    """Records in GZIP TFRecord files, from the framing (uint64 length, 4-byte CRC, data, 4-byte CRC)."""
    n = 0
    for path in directory.iterdir():
        data, pos = gzip.decompress(path.read_bytes()), 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            pos += 12 + length + 4
            n += 1
    return n


def _rdp_epsilon(ledger) -> float:
    """ε of the steps the ledger records, computed here with dp-accounting's RDP accountant."""
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant()
    for e in ledger["events"]:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(
            e["sampling_probability"], dp_accounting.GaussianDpEvent(e["noise_multiplier"])), e["steps"])
    return accountant.get_epsilon(ledger["delta"])


@pytest.mark.slow
def test_image_environment_runs_every_compiled_task(image_env, compiled, tmp_path):
    """ExampleGen → trainers → evaluators → report, each task's compiled command line in the image's environment,
    with a run's parameters as KFP resolves them: this week's data root, 2 epochs, the DP variant at ε = 2 and
    the gate at AUC 0.6 (the compiled defaults: the image's digits, 40 epochs, ε = 1, no gate)."""
    python, digits = image_env["python"], image_env["digits"]
    _, spec = compiled
    run_params = {"data_root": str(digits), "epochs": 2, TARGET_EPSILON_DP: 2.0, "max_auc": 0.6}
    store, outputs = tmp_path / "gcs", {}
    for name in _task_order(spec):
        task, comp = _task_component(spec, name)
        inputs = {k: outputs[(a["taskOutputArtifact"]["producerTask"], a["taskOutputArtifact"]["outputArtifactKey"])]
                  for k, a in task["inputs"].get("artifacts", {}).items()}
        uris = {k: str(store / name / k) for k in comp["outputDefinitions"]["artifacts"]}
        executor_input = _executor_input(spec, name, inputs, uris, tmp_path / "kfp" / name / "output_metadata.json",
                                         run_params=run_params, overrides=_local_store(spec, name, store))
        out = _run_task(spec, name, executor_input, cwd=image_env["task_cwd"], timeout=1200, python=python)
        for key, uri in uris.items():
            [artifact] = out["artifacts"][key]["artifacts"]
            outputs[(name, key)] = (uri, artifact.get("metadata", {}))

    # ExampleGen read the run's data root: every digit, split into members and non-members.
    from sklearn.datasets import load_digits

    examples = store / "CsvExampleGen" / "examples"
    counts = {s: _count_tfrecords(examples / f"Split-{s}") for s in ("train", "eval")}
    assert sum(counts.values()) == len(load_digits().target) and min(counts.values()) > 0
    # The trainers ran the run's 2 epochs; the DP variant was calibrated to the run's ε = 2.
    for v in VARIANTS:
        ledger = json.loads((store / _task("DPTrainer", v) / "model_run" / "ledger.json").read_text())
        assert [e["epoch"] for e in ledger["epochs"]] == [1, 2], v
        assert ledger["n_examples"] == counts["train"]
    ledger = json.loads((store / TRAINER_DP / "model_run" / "ledger.json").read_text())
    assert ledger["epsilon"] == pytest.approx(_rdp_epsilon(ledger), rel=1e-6)
    assert 1.9 <= ledger["epsilon"] <= 2.0 + 1e-6  # not the compiled ε = 1
    # Each evaluator gated at the run's max_auc = 0.6; the report carries the blessings and the worst AUCs.
    summary = json.loads((store / "PrivacyReportGenerator" / "report" / "summary.json").read_text())
    rows = {r["name"]: r for r in summary["variants"]}
    for v in VARIANTS:
        evaluator = store / _task("MembershipInferenceEvaluator", v)
        final = json.loads((evaluator / "attack_results" / "results" / f"{v}_final.json").read_text())
        blessing = json.loads((evaluator / "blessing" / "blessing.json").read_text())
        assert blessing["thresholds"]["auc"] == 0.6
        _assert_gated_at(blessing, final, max_auc=0.6)
        assert rows[v]["blessed"] is blessing["blessed"]
        assert rows[v]["max_auc"] == pytest.approx(max(r["auc"] for r in final["results"]))
    assert (store / "PrivacyReportGenerator" / "report" / "report.html").is_file()
