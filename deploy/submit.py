"""Upload the compiled privacy-audit pipeline to Kubeflow Pipelines and start a run, or with --schedule
create a recurring run that audits every scheduled retraining.

Runs in deploy/'s own environment (the kfp client needs a newer protobuf than TFX 1.16):

    python3 -m venv deploy/.venv-kfp && deploy/.venv-kfp/bin/pip install -r deploy/requirements.txt
    .venv/bin/privacy-audit compile-kfp --output pipeline.yaml --image REGISTRY/privacy-audit:TAG \
        --pipeline-root gs://BUCKET/privacy-audit
    deploy/.venv-kfp/bin/python deploy/submit.py --host https://KFP_HOST --package pipeline.yaml
    deploy/.venv-kfp/bin/python deploy/submit.py --host https://KFP_HOST --package pipeline.yaml \
        --schedule "0 0 3 * * 1"      # KFP cron has 6 fields (seconds first): every Monday 03:00

The recurring run has max concurrency 1 and no catch-up: a slow audit never overlaps the next one,
and a paused schedule does not replay the runs it missed.
"""

from __future__ import annotations

import argparse
import datetime
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    p.add_argument("--package", required=True, help="pipeline spec from `privacy-audit compile-kfp`")
    p.add_argument("--pipeline-name", default="privacy-audit")
    p.add_argument("--experiment", default="privacy-audit")
    p.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user installs)")
    p.add_argument("--pipeline-root", default=None, help="override the spec's default pipeline root")
    p.add_argument("--schedule", default=None,
                   help="cron expression (6 fields, seconds first) for a recurring run; omit for one run now")
    p.add_argument("--run-name", default=None)
    p.add_argument("--dry-run", action="store_true", help="load and check the package, contact no server")
    return p.parse_args(argv)


def load_package(path: str):
    """Loads the spec with the kfp SDK: proves the file is a pipeline the client can upload."""
    from kfp.components import load_component_from_file

    return load_component_from_file(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    component = load_package(args.package)
    print(f"Loaded {args.package}: pipeline {component.name!r}")
    if args.dry_run:
        return 0
    import kfp

    client = kfp.Client(host=args.host, namespace=args.namespace)
    version = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    # Runs and recurring runs from an uploaded pipeline need both its id and a version id.
    pipeline_id = client.get_pipeline_id(args.pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(args.package, pipeline_name=args.pipeline_name).pipeline_id
        # Uploading a pipeline creates its first version, holding this package.
        versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
        if not versions.pipeline_versions:
            raise RuntimeError(f"pipeline {args.pipeline_name!r} ({pipeline_id}) was uploaded but has no version")
        version_id = versions.pipeline_versions[0].pipeline_version_id
    else:  # the name exists: add this package as a new version
        pv = client.upload_pipeline_version(args.package, pipeline_version_name=f"{args.pipeline_name}-{version}",
                                            pipeline_id=pipeline_id)
        version_id = pv.pipeline_version_id
    experiment = client.create_experiment(args.experiment, namespace=args.namespace)
    run_name = args.run_name or f"{args.pipeline_name}-{version}"
    if args.schedule:
        job = client.create_recurring_run(
            experiment_id=experiment.experiment_id, job_name=run_name, cron_expression=args.schedule,
            max_concurrency=1, no_catchup=True, pipeline_id=pipeline_id, version_id=version_id,
            enabled=True, **({"pipeline_root": args.pipeline_root} if args.pipeline_root else {}))
        print(f"Recurring run {job.recurring_run_id} created: cron {args.schedule!r}, max concurrency 1, no catch-up")
    else:
        run = client.run_pipeline(experiment_id=experiment.experiment_id, job_name=run_name,
                                  pipeline_id=pipeline_id, version_id=version_id,
                                  **({"pipeline_root": args.pipeline_root} if args.pipeline_root else {}))
        print(f"Run {run.run_id} started: {args.host}/#/runs/details/{run.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
