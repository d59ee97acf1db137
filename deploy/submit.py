"""Upload the compiled privacy-audit pipeline to Kubeflow Pipelines and start a run, or with --schedule
create a recurring run that audits every scheduled retraining.

Runs in deploy/'s own environment (the kfp client needs a newer protobuf than TFX 1.16):

    python3 -m venv deploy/.venv-kfp && deploy/.venv-kfp/bin/pip install -r deploy/requirements.txt
    .venv/bin/privacy-audit compile-kfp --output pipeline.yaml --image REGISTRY/privacy-audit:TAG \
        --pipeline-root gs://BUCKET/privacy-audit
    deploy/.venv-kfp/bin/python deploy/submit.py --host https://KFP_HOST --package pipeline.yaml
    deploy/.venv-kfp/bin/python deploy/submit.py --host https://KFP_HOST --package pipeline.yaml \
        --schedule "0 0 3 * * 1"      # KFP cron has 6 fields (seconds first): every Monday 03:00
    deploy/.venv-kfp/bin/python deploy/submit.py --dry-run --package pipeline.yaml --param max_auc=0.6 \
        --schedule "0 0 3 * * 1"      # print the request, contact no server

`--param NAME=VALUE` (repeatable) sets a pipeline parameter of the run or recurring run (the compiled
defaults hold for the others): the names and types are the package's `root.inputDefinitions`.

The recurring run has max concurrency 1 and no catch-up: a slow audit never overlaps the next one,
and a paused schedule does not replay the runs it missed. Its runs share the audit history: the report
task's `history_uri` is compiled in as a fixed folder (default `<pipeline root at compile time>/audit_history`),
so every scheduled run adds its file there and the report's trend shows all earlier runs (no ML Metadata
needed); `--pipeline-root` moves the artifacts of the runs, not their shared history.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from typing import Any, Dict, List

# What `--dry-run` shows for the ids the server assigns when the package is uploaded.
UPLOADED = "<assigned when the package is uploaded>"


class UsageError(ValueError):
    """Bad input: one line on stderr, exit status 2."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=None,
                   help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline (not needed with --dry-run)")
    p.add_argument("--package", default="pipeline.yaml",
                   help="pipeline spec from `privacy-audit compile-kfp` (default: %(default)s)")
    p.add_argument("--pipeline-name", default="privacy-audit")
    p.add_argument("--experiment", default="privacy-audit")
    p.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user installs)")
    p.add_argument("--pipeline-root", default=None, help="override the spec's default pipeline root")
    p.add_argument("--schedule", default=None,
                   help="cron expression (6 fields, seconds first) for a recurring run; omit for one run now")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="pipeline parameter of the run (repeatable), e.g. --param max_auc=0.6")
    p.add_argument("--run-name", default=None)
    p.add_argument("--dry-run", action="store_true",
                   help="load and check the package, print the request it would send, contact no server")
    args = p.parse_args(argv)
    if args.host is None and not args.dry_run:
        p.error("--host is required (or --dry-run)")
    return args


def load_package(path: str):
    """Loads the spec with the kfp SDK: proves the file is a pipeline the client can upload."""
    import os

    from kfp.components import load_component_from_file

    if not os.path.isfile(path):
        raise UsageError(f"--package {path}: no such file (write it with "
                         f"`privacy-audit compile-kfp --output {path}`)")
    return load_component_from_file(path)


def declared_parameters(component) -> Dict[str, Any]:
    """{name: ParameterSpec} of the pipeline's parameters (root.inputDefinitions)."""
    return dict(component.pipeline_spec.root.input_definitions.parameters)


def _convert(name: str, text: str, spec) -> Any:
    """``text`` as the parameter's declared type; UsageError naming the parameter and type otherwise."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    kind = pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(spec.parameter_type)
    try:
        if kind == "NUMBER_INTEGER":
            return int(text)
        if kind == "NUMBER_DOUBLE":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        if kind == "BOOLEAN":
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if kind in ("LIST", "STRUCT"):
            return json.loads(text)
        return text
    except ValueError:
        wanted = {"NUMBER_INTEGER": "an integer", "NUMBER_DOUBLE": "a finite number", "BOOLEAN": "true or false",
                  "LIST": "a JSON list", "STRUCT": "a JSON object"}.get(kind, kind)
        raise UsageError(f"--param {name}={text!r}: {name} takes {wanted}") from None


def parse_params(pairs: List[str], declared: Dict[str, Any]) -> Dict[str, Any]:
    """``["max_auc=0.6", ...]`` → ``{"max_auc": 0.6}``, typed as the package declares each parameter."""
    out: Dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--param {pair!r}: expected NAME=VALUE, e.g. --param max_auc=0.6")
        if name not in declared:
            raise UsageError(f"--param {name}: the pipeline has no parameter {name!r}; it has: "
                             f"{', '.join(sorted(declared)) or 'none'}")
        out[name] = _convert(name, text, declared[name])
    return out


def request(args: argparse.Namespace, params: Dict[str, Any], experiment_id: str, pipeline_id: str,
            version_id: str, run_name: str):
    """(API path, body) of the run or recurring run, built with the kfp client's request models as
    ``kfp.Client.run_pipeline`` / ``create_recurring_run`` build them (what --dry-run prints)."""
    import kfp_server_api as api

    common = dict(experiment_id=experiment_id, display_name=run_name,
                  pipeline_version_reference=api.V2beta1PipelineVersionReference(
                      pipeline_id=pipeline_id, pipeline_version_id=version_id),
                  runtime_config=api.V2beta1RuntimeConfig(pipeline_root=args.pipeline_root, parameters=params))
    if not args.schedule:
        return "/apis/v2beta1/runs", api.V2beta1Run(**common)
    # Max concurrency 1 and no catch-up: a slow audit never overlaps the next, a paused schedule replays nothing.
    return "/apis/v2beta1/recurringruns", api.V2beta1RecurringRun(
        **common, mode=api.RecurringRunMode.ENABLE, no_catchup=True, max_concurrency=1,
        trigger=api.V2beta1Trigger(cron_schedule=api.V2beta1CronSchedule(cron=args.schedule)))


def _check_schedule(cron: str) -> None:
    if cron is not None and not cron.startswith("@") and len(cron.split()) != 6:
        raise UsageError(f"--schedule {cron!r}: KFP cron expressions have 6 fields, seconds first "
                         "(e.g. \"0 0 3 * * 1\" for Mondays 03:00)")


def report_history_uri(component) -> str:
    """The audit history folder compiled into the report task (shared by every run of the package)."""
    for name, task in component.pipeline_spec.root.dag.tasks.items():
        if name.startswith("PrivacyReportGenerator"):
            param = task.inputs.parameters.get("history_uri")
            if param is not None and param.HasField("runtime_value"):
                return param.runtime_value.constant.string_value
    return ""


def upload(client, args: argparse.Namespace, version: str):
    """(pipeline id, version id) of this package: a new pipeline, or a new version of the existing one."""
    pipeline_id = client.get_pipeline_id(args.pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(args.package, pipeline_name=args.pipeline_name).pipeline_id
        # Uploading a pipeline creates its first version, holding this package.
        versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
        if not versions.pipeline_versions:
            raise RuntimeError(f"pipeline {args.pipeline_name!r} ({pipeline_id}) was uploaded but has no version")
        return pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    pv = client.upload_pipeline_version(args.package, pipeline_version_name=f"{args.pipeline_name}-{version}",
                                        pipeline_id=pipeline_id)
    return pipeline_id, pv.pipeline_version_id


def submit(args: argparse.Namespace) -> int:
    component = load_package(args.package)
    params = parse_params(args.param, declared_parameters(component))
    _check_schedule(args.schedule)
    print(f"Loaded {args.package}: pipeline {component.name!r}")
    version = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_name = args.run_name or f"{args.pipeline_name}-{version}"
    if args.dry_run:
        import kfp_server_api

        path, body = request(args, params, UPLOADED, UPLOADED, UPLOADED, run_name)
        wire = kfp_server_api.ApiClient().sanitize_for_serialization(body)
        print(json.dumps({"method": "POST", "path": path, "body": wire, "pipeline": args.pipeline_name,
                          "experiment": args.experiment, "package": args.package}, indent=2, sort_keys=True))
        return 0
    import kfp

    client = kfp.Client(host=args.host, namespace=args.namespace)
    pipeline_id, version_id = upload(client, args, version)
    experiment = client.create_experiment(args.experiment, namespace=args.namespace)
    # The client builds the same body as request() (the test compares them against a fake KFP API).
    common = dict(experiment_id=experiment.experiment_id, job_name=run_name, pipeline_id=pipeline_id,
                  version_id=version_id, params=params, pipeline_root=args.pipeline_root)
    if args.schedule:
        job = client.create_recurring_run(cron_expression=args.schedule, max_concurrency=1, no_catchup=True,
                                          enabled=True, **common)
        print(f"Recurring run {job.recurring_run_id} created: cron {args.schedule!r}, max concurrency 1, no catch-up")
        print(f"Every run adds to the audit history at {report_history_uri(component) or '(none compiled in)'}")
    else:
        run = client.run_pipeline(**common)
        print(f"Run {run.run_id} started: {args.host}/#/runs/details/{run.run_id}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return submit(args)
    except UsageError as e:
        print(f"submit.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
