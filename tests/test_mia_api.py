"""run_attacks / attack_file / the `attack` subcommand, and the results JSON (schema, atomic writes)."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from privacy_audit.components.membership_inference import api, results as R
from privacy_audit.components.membership_inference.data import AttackInputs, synthetic_inputs
from privacy_audit.components.membership_inference.slicing import SlicingSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic():
    inp = synthetic_inputs(500, 400, 3, noise_scale=1.5, true_class_mean=1.5, true_class_sd=1.0)
    return inp.logits_members, inp.labels_members, inp.logits_nonmembers, inp.labels_nonmembers


@pytest.fixture
def npz_path(tmp_path):
    lm, ym, ln, yn = synthetic()
    path = tmp_path / "model_a.npz"
    np.savez(path, logits_train=lm, logits_test=ln, labels_train=ym, labels_test=yn)
    return str(path)


def _parser():
    p = argparse.ArgumentParser()
    api.add_attack_arguments(p)
    return p


def test_run_attacks_results_follow_the_schema():
    lm, ym, ln, yn = synthetic()
    inp = AttackInputs(logits_members=lm, labels_members=ym, logits_nonmembers=ln, labels_nonmembers=yn)
    out = api.run_attacks(inp, ("threshold", "logistic_regression"), SlicingSpec(by_class=True), seed=3,
                          metadata={"model_variant": "cnn2", "epoch": 4, "epsilon": None})
    R.validate_results(out)
    assert out["schema_version"] == 1
    md = out["metadata"]
    assert md["model_variant"] == "cnn2" and md["epoch"] == 4 and md["epsilon"] is None
    assert md["accuracy_train"] == pytest.approx(np.mean(lm.argmax(1) == ym))
    assert md["accuracy_test"] == pytest.approx(np.mean(ln.argmax(1) == yn))
    assert len(out["results"]) == 2 * 4 and out["skipped_slices"] == []
    r = out["results"][0]
    assert set(R.RESULT_KEYS) <= set(r)
    assert set(r["tpr_at_fpr"]) == {"0.01", "0.001"}
    assert r["slice"] == {"feature": "entire_dataset"} and r["attack"] == "threshold"
    text = R.dumps_results(out)
    assert "NaN" not in text and "Infinity" not in text
    again = api.run_attacks(inp, ("threshold", "logistic_regression"), SlicingSpec(by_class=True), seed=3,
                            metadata={"model_variant": "cnn2", "epoch": 4, "epsilon": None})
    strip = lambda o: [{k: v for k, v in r.items()} for r in o["results"]]  # noqa: E731
    assert strip(again) == strip(out)  # seeded: identical


def test_write_read_roundtrip_atomic_and_strict(tmp_path):
    lm, ym, ln, yn = synthetic()
    inp = AttackInputs(logits_members=lm, labels_members=ym, logits_nonmembers=ln, labels_nonmembers=yn)
    out = api.run_attacks(inp, ["threshold"])
    path = tmp_path / "sub" / "results.json"
    R.write_results(str(path), out)
    R.write_results(str(path), out)  # replaces
    assert os.listdir(path.parent) == ["results.json"]  # no temporary left behind
    assert R.read_results(str(path)) == json.loads(json.dumps(out))
    # NaN becomes null on writing (ppv is nullable), and is refused on reading.
    out["results"][0]["ppv"] = float("nan")
    R.write_results(str(path), out)
    assert R.read_results(str(path))["results"][0]["ppv"] is None
    path.write_text(path.read_text().replace('"ppv": null', '"ppv": NaN'))
    with pytest.raises(R.ResultsValidationError, match="NaN"):
        R.read_results(str(path))


@pytest.mark.parametrize("mutate,field", [
    (lambda o: o["results"][0].__setitem__("auc", 1.5), r"results\[0\]\.auc"),
    (lambda o: o["results"][0].pop("attacker_advantage"), r"results\[0\]\.attacker_advantage: missing"),
    (lambda o: o["results"][0]["tpr_at_fpr"].__setitem__("0.01", "x"), r"results\[0\]\.tpr_at_fpr\.0\.01"),
    (lambda o: o["results"][0]["roc"]["fpr"].pop(), r"results\[0\]\.roc: fpr has"),
    (lambda o: o["results"][0].__setitem__("slice", {"feature": "class"}), r"results\[0\]\.slice\.value"),
    (lambda o: o["results"][0].__setitem__("n_members", 1.5), r"results\[0\]\.n_members"),
    (lambda o: o.__setitem__("schema_version", 2), r"schema_version"),
    (lambda o: o["metadata"].__setitem__("epoch", "two"), r"metadata\.epoch"),
    (lambda o: o["metadata"].pop("model_variant"), r"metadata\.model_variant"),
    (lambda o: o["skipped_slices"].append({"slice": {}}), r"skipped_slices\[0\]\.reason"),
])
def test_validation_errors_name_the_field(tmp_path, mutate, field):
    inp = AttackInputs(loss_members=np.linspace(0, 1, 50), loss_nonmembers=np.linspace(0.5, 2, 60))
    out = json.loads(json.dumps(api.run_attacks(inp, ["threshold"])))
    mutate(out)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(out))
    with pytest.raises(R.ResultsValidationError, match=field):
        R.read_results(str(path))


def test_attack_file_npz_and_parquet(tmp_path, npz_path):
    out_path = tmp_path / "out" / "results.json"
    obj = api.attack_file(npz_path, str(out_path), ["threshold"], ["by_class"], seed=1, min_slice_size=20)
    assert out_path.exists() and obj["metadata"]["model_variant"] == "model_a"
    assert [r["slice"].get("value") for r in obj["results"]] == [None, 0, 1, 2]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    data = np.load(npz_path)
    table = pa.table({"split": ["train"] * 500 + ["test"] * 400,
                      "logits": pa.array(list(np.concatenate([data["logits_train"], data["logits_test"]]))),
                      "label": np.concatenate([data["labels_train"], data["labels_test"]])})
    pq_path = tmp_path / "model_a.parquet"
    pq.write_table(table, pq_path)
    obj2 = api.attack_file(str(pq_path), str(tmp_path / "r2.json"), ["threshold"], ["by_class"], 1, 20)
    assert [r["auc"] for r in obj2["results"]] == [r["auc"] for r in obj["results"]]


def test_main_attack_cli(tmp_path, npz_path, capsys):
    out_path = tmp_path / "results.json"
    args = _parser().parse_args(["--input", npz_path, "--output", str(out_path), "--attacks",
                                 "threshold,logistic_regression", "--slicing", "by_class", "--seed", "7"])
    assert api.main_attack(args) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "[1/8]" in captured.err  # progress on stderr
    obj = R.read_results(str(out_path))
    assert obj["metadata"]["seed"] == 7 and len(obj["results"]) == 8


@pytest.mark.parametrize("case,message", [
    ("missing", "input file not found"),
    ("attack", "unknown attack 'bogus'"),
    ("slicing", "unknown slicing 'by_colour'"),
    ("nan", "logits_train contains 4 non-finite values"),
    ("format", "unsupported input format '.csv'"),
    ("empty", "no nonmembers"),
])
def test_main_attack_errors(tmp_path, npz_path, capsys, case, message):
    argv = ["--input", npz_path, "--output", str(tmp_path / "r.json")]
    if case == "missing":
        argv[1] = str(tmp_path / "nope.npz")
    elif case == "attack":
        argv += ["--attacks", "threshold,bogus"]
    elif case == "slicing":
        argv += ["--slicing", "by_colour"]
    elif case == "nan":
        lm, ym, ln, yn = synthetic()
        lm[:2, :2] = np.nan
        argv[1] = str(tmp_path / "nan.npz")
        np.savez(argv[1], logits_train=lm, logits_test=ln, labels_train=ym, labels_test=yn)
    elif case == "format":
        argv[1] = str(tmp_path / "x.csv")
        open(argv[1], "w").close()
    elif case == "empty":
        argv[1] = str(tmp_path / "empty.npz")
        np.savez(argv[1], loss_train=np.ones(5), loss_test=np.ones(0))
    assert api.main_attack(_parser().parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("privacy-audit attack: error:") and message in err
    assert not (tmp_path / "r.json").exists()


def test_duplicate_examples_are_warned_and_counted():
    lm, ym, ln, yn = synthetic()
    ids_m = np.array([f"ex{i}" for i in range(500)])
    ids_n = np.array([f"ex{i}" for i in range(490, 890)])  # 10 shared
    inp = AttackInputs(logits_members=lm, labels_members=ym, logits_nonmembers=ln, labels_nonmembers=yn,
                       example_ids_members=ids_m, example_ids_nonmembers=ids_n)
    with pytest.warns(api.DuplicateExamplesWarning, match="10 example ids"):
        out = api.run_attacks(inp, ["threshold"])
    assert out["metadata"]["n_duplicate_examples"] == 10


def test_import_is_light_and_core_imports_no_tensorflow():
    code = ("import sys, numpy as np\n"
            "import privacy_audit.components.membership_inference.api as api\n"
            "assert 'sklearn' not in sys.modules and 'scipy' not in sys.modules\n"
            "from privacy_audit.components.membership_inference.data import AttackInputs\n"
            "inp = AttackInputs(loss_members=np.arange(30.), loss_nonmembers=np.arange(30.) + 5)\n"
            "api.run_attacks(inp, ['threshold', 'logistic_regression'])\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tfx', 'keras', 'apache_beam')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_cli_registration_if_available(tmp_path, npz_path):
    cli = pytest.importorskip("privacy_audit.pipelines.cli")
    out_path = tmp_path / "cli.json"
    assert cli.main(["attack", "--input", npz_path, "--output", str(out_path), "--attacks", "threshold",
                     "--quiet"]) == 0
    assert R.read_results(str(out_path))["results"][0]["attack"] == "threshold"


@pytest.mark.medium
def test_benchmark_runs_small():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "mia_throughput.py"), "--n", "2000"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("seconds=") and float(last.split("=")[1]) > 0
    assert "logistic_regression auc: all=" in proc.stdout
