"""`privacy-audit run` end to end: a real LocalDagRunner pipeline with ML Metadata in SQLite.

One small configuration (600 digits, 2 epochs) is run, re-run (TFX's cache), interrupted after training
and resumed; bad inputs must fail clearly without touching an earlier run's outputs.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from privacy_audit.components.common.examples import write_digits_csv

CLI = [sys.executable, "-m", "privacy_audit.pipelines.cli"]


def _small_args(data_dir, out_dir, *extra):
    return ["run", "--output-dir", str(out_dir), "--data", str(data_dir), "--label-key", "label",
            "--epochs", "2", "--checkpoint-every", "1", "--model", "mlp", "--attacks", "threshold",
            "--direct-num-workers", "1", *extra]


def _run(args, timeout=900):
    t = time.time()
    r = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)
    return r, time.time() - t


def _executions(db):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = db
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(cfg)
    types = {t.id: t.name for t in store.get_execution_types()}
    out = []
    for e in store.get_executions():
        out.append((types[e.type_id], metadata_store_pb2.Execution.State.Name(e.last_known_state), e.id))
    return out


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    data = base / "data"
    write_digits_csv(str(data), n=600, seed=2)
    out = base / "out"
    r, seconds = _run(_small_args(data, out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return data, out, r, seconds


@pytest.mark.slow
def test_run_writes_report_and_summary_matching_the_ledgers(first_run):
    data, out, r, _ = first_run
    assert "Report:" in r.stdout and str(out / "report.html") in r.stdout
    # Each trainer counted the Examples against the CSV's 600 rows (counted before the pipeline started).
    assert r.stdout.count("the Examples hold all 600 rows of the data") == 2
    html = (out / "report.html").read_text()
    assert "<img" in html and "http://" not in html.replace("http://www.w3.org", "")
    summary = json.loads((out / "summary.json").read_text())
    variants = {v["name"]: v for v in summary["variants"]}
    from privacy_audit.pipelines.pipeline import default_variants

    dp_spec = next(v for v in default_variants() if v.private)
    assert set(variants) == {"non_private", dp_spec.name}
    assert variants["non_private"]["private"] is False and variants["non_private"]["epsilon"] is None
    # ε in the summary is the trainer's ledger ε, read back from the DPTrainer's ModelRun artifact.
    ledgers = []
    for root, _, files in os.walk(out / "pipeline_root"):
        if "ledger.json" in files:
            ledgers.append(json.loads(open(os.path.join(root, "ledger.json")).read()))
    dp_ledger = [l for l in ledgers if l["model_variant"] == dp_spec.name][-1]
    assert variants[dp_spec.name]["epsilon"] == pytest.approx(dp_ledger["epsilon"], rel=1e-12)
    assert variants[dp_spec.name]["epsilon"] == pytest.approx(dp_spec.target_epsilon, abs=0.01)
    for v in variants.values():
        assert 0 <= v["max_auc"] <= 1 and 0 <= v["max_attacker_advantage"] <= 1
        assert isinstance(v["blessed"], bool)


@pytest.mark.slow
def test_rerun_uses_the_cache(first_run):
    data, out, _, first_seconds = first_run
    before = _executions(str(out / "metadata.sqlite"))
    r, seconds = _run(_small_args(data, out))
    assert r.returncode == 0, r.stderr[-3000:]
    after = _executions(str(out / "metadata.sqlite"))
    new = [e for e in after if e not in before]
    # Every component of the second run is a cached execution in ML Metadata.
    assert new and all(state == "CACHED" for _, state, _ in new), new
    assert len(new) == 6
    assert "cached" in r.stdout
    assert seconds < first_seconds


@pytest.mark.slow
def test_interrupted_run_resumes_without_redoing_finished_components(first_run):
    data, out, _, _ = first_run
    args = _small_args(data, out, "--seed", "7")
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    trained = set()
    deadline = time.time() + 600
    try:
        for line in proc.stdout:
            if "✓ DPTrainer." in line:
                trained.add(line.split("✓ ")[1].split()[0])
            if len(trained) == 2 or time.time() > deadline:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(trained) == 2, "the run did not get through training"
    db = str(out / "metadata.sqlite")
    before = _executions(db)
    r, _ = _run(args)
    assert r.returncode == 0, r.stderr[-3000:]
    new = [e for e in _executions(db) if e not in before]
    by_type = {}
    for t, state, _ in new:
        by_type.setdefault(t, []).append(state)
    trainer_states = [s for t, states in by_type.items() if "DPTrainer" in t for s in states]
    evaluator_states = [s for t, states in by_type.items() if "MembershipInference" in t for s in states]
    # The finished trainers are reused; what was cut short runs now.
    assert trainer_states == ["CACHED", "CACHED"], by_type
    assert "COMPLETE" in evaluator_states, by_type


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing_dir", "no_label_column", "bad_config_key", "output_is_file"])
def test_bad_input_fails_clearly_and_keeps_earlier_outputs(first_run, tmp_path, case):
    data, out, _, _ = first_run
    report_before = (out / "report.html").read_bytes()
    summary_before = (out / "summary.json").read_bytes()
    if case == "missing_dir":
        args = _small_args(tmp_path / "nope", out)
        expect = "input directory not found"
    elif case == "no_label_column":
        args = _small_args(data, out)
        args[args.index("--label-key") + 1] = "diagnosis"
        expect = "no label column 'diagnosis'"
    elif case == "bad_config_key":
        cfg = tmp_path / "audit.yaml"
        cfg.write_text("epochs: 2\nlearning_rat: 0.1\n")
        args = _small_args(data, out, "--config", str(cfg))
        expect = "unknown config key(s) ['learning_rat']"
    else:
        f = tmp_path / "a_file"
        f.write_text("keep me")
        args = _small_args(data, f)
        expect = "exists and is a file"
    r, _ = _run(args, timeout=300)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    assert expect in r.stderr
    assert "Traceback" not in r.stderr
    assert (out / "report.html").read_bytes() == report_before
    assert (out / "summary.json").read_bytes() == summary_before
    if case == "output_is_file":
        assert (tmp_path / "a_file").read_text() == "keep me"


def _variants(*argv, config=None):
    from privacy_audit.pipelines.cli import build_parser
    from privacy_audit.pipelines.run import build_variants, resolve_settings

    args = build_parser().parse_args(["run", *argv] + (["--config", str(config)] if config else []))
    return {v.name: v for v in build_variants(resolve_settings(args))}


def test_demo_variants_keep_their_own_dp_settings_unless_overridden(tmp_path):
    from privacy_audit.pipelines.pipeline import default_variants

    demo = {v.name: v for v in default_variants()}
    got = _variants()
    assert got.keys() == demo.keys()
    dp = next(v for v in demo.values() if v.private)
    assert got[dp.name].l2_norm_clip == dp.l2_norm_clip and got[dp.name].target_epsilon == dp.target_epsilon
    assert got[dp.name].builtin_model == dp.builtin_model and got["non_private"].builtin_model == "mlp"
    # Overrides rename the DP variant after the guarantee it now has.
    got = _variants("--target-epsilon", "2.5", "--l2-norm-clip", "0.5")
    assert got["dp_eps2_5"].target_epsilon == 2.5 and got["dp_eps2_5"].l2_norm_clip == 0.5
    got = _variants("--noise-multiplier", "1.5")
    assert got["dp_sigma1_5"].noise_multiplier == 1.5 and got["dp_sigma1_5"].target_epsilon is None
    # Variants of a config file get ε = 3 and C = 1 unless they (or the command line) say otherwise.
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("variants:\n  - {name: base, private: false}\n  - {name: dp}\n  - {name: dp2, target_epsilon: 8}\n")
    got = _variants(config=cfg)
    assert (got["dp"].target_epsilon, got["dp"].l2_norm_clip) == (3.0, 1.0)
    assert got["dp2"].target_epsilon == 8 and got["base"].private is False
    assert _variants("--target-epsilon", "2", config=cfg)["dp"].target_epsilon == 2
