"""Issue 15: what a hostile or careless user tried against `run`, `attack` and `epsilon`, one test per class of
input. Each asserts the exit status, that the message names the problem, and that nothing outside the output
directory (and nothing written before) was touched.

The CLI runs in-process (`cli.main`) where the behaviour under test happens before TensorFlow is imported;
subprocesses only where the process itself matters (exit status of the real entry point, signals).
"""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from privacy_audit.components.dp_trainer import accounting
from privacy_audit.pipelines import cli

CLI = [sys.executable, "-m", "privacy_audit.pipelines.cli"]


def _main(capsys, *argv):
    """Runs the CLI in-process; returns (exit status, stdout, stderr)."""
    try:
        rc = cli.main(list(argv))
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _tree(root):
    """Every path below ``root`` with its size and mtime: to show nothing was touched."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def _digits_csv(path, n=200, labels=None):
    from privacy_audit.components.common.examples import write_digits_csv

    write_digits_csv(str(path), n=n, seed=1)
    if labels is not None:
        lines = (path / "digits.csv").read_text().splitlines()
        body = [",".join(line.split(",")[:-1] + [labels(i)]) for i, line in enumerate(lines[1:])]
        (path / "digits.csv").write_text("\n".join([lines[0]] + body) + "\n")
    return path


# --- 1. names that reach paths ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["x/../../../../ESCAPED", "a/b", "..", ".hidden", "a\x00b", "x" * 64, "",
                                  "back\\slash", "sp ace"])
def test_variant_and_pipeline_names_that_could_leave_the_output_directory_are_refused(tmp_path, capsys, name):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    cfg = work / "audit.json"
    cfg.write_text(json.dumps({"variants": [{"name": name, "private": False}]}))
    before = _tree(tmp_path)
    rc, _, err = _main(capsys, "run", "--config", str(cfg), "--output-dir", str(out))
    assert rc == 2 and "variants[0].name" in err and "not a valid name" in err
    cfg.write_text(json.dumps({"pipeline_name": name}))
    rc, _, err = _main(capsys, "run", "--config", str(cfg), "--output-dir", str(out))
    assert rc == 2 and "pipeline_name" in err and "not a valid name" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _tree(tmp_path) == {**before, "work/audit.json": _tree(tmp_path)["work/audit.json"]}
    assert not out.exists() and not (tmp_path / "ESCAPED").exists()
    # The same root guards the Python API.
    from privacy_audit.pipelines.pipeline import VariantSpec

    with pytest.raises(ValueError, match="not a valid name"):
        VariantSpec(name=name)


# --- 2. attack output resolving to its input ---------------------------------------------------------------

def _attack_inputs(path, n_members=60, n_nonmembers=60, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, logits_train=rng.normal(size=(n_members, 3)), logits_test=rng.normal(size=(n_nonmembers, 3)),
             labels_train=rng.integers(0, 3, n_members), labels_test=rng.integers(0, 3, n_nonmembers))
    return path


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink", "dotted"])
def test_attack_refuses_an_output_that_is_its_input(tmp_path, capsys, link):
    src = _attack_inputs(tmp_path / "in.npz")
    out = {"same": src, "symlink": tmp_path / "sym.npz", "hardlink": tmp_path / "hard.npz",
           "dotted": tmp_path / "sub" / ".." / "in.npz"}[link]
    (tmp_path / "sub").mkdir()
    if link == "symlink":
        os.symlink(src, out)
    elif link == "hardlink":
        os.link(src, out)
    data = src.read_bytes()
    before = _tree(tmp_path)
    rc, _, err = _main(capsys, "attack", "--input", str(src), "--output", str(out), "--attacks", "threshold")
    assert rc == 2 and "is the input file" in err and "destroy the input" in err
    assert src.read_bytes() == data and _tree(tmp_path) == before


# --- 3. the PLD accountant's work is bounded by rule --------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["--epochs", "1", "--noise-multiplier", "0.05"],
    ["--epochs", "1e9", "--noise-multiplier", "1"],
    ["--epochs", "1", "--noise-multiplier", "1e-6"],
])
def test_pld_past_its_work_bound_falls_back_to_rdp_with_a_note(capsys, argv):
    rc, out, err = _main(capsys, "epsilon", "--n", "1000", "--batch-size", "100", "--accountant", "pld", *argv)
    assert rc == 0, err
    got = json.loads(out)
    assert got["accountant"] == "rdp" and got["accountant_requested"] == "pld"
    assert "work points" in err and "RDP" in err
    # The figure is RDP's own (dp-accounting's RdpAccountant, independently).
    from dp_accounting import rdp

    acc = rdp.RdpAccountant(accounting.RDP_ORDERS)
    acc.compose(accounting.dp_sgd_event(0.1, got["noise_multiplier"], got["steps"]))
    assert got["epsilon"] == pytest.approx(acc.get_epsilon(1e-4), rel=1e-9)


@pytest.mark.medium
def test_pld_within_its_bound_equals_dp_accountings_pld_accountant():
    from dp_accounting import pld

    runs = [(0.01, 2.0, 50), (0.02, 3.0, 20)]
    acc = pld.PLDAccountant(value_discretization_interval=accounting.PLD_DISCRETIZATION)
    for q, s, t in runs:
        acc.compose(accounting.dp_sgd_event(q, s, t))
    assert accounting.pld_epsilon(runs, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)


@pytest.mark.medium
def test_pld_work_rule_refuses_before_allocating():
    # A single step of σ = 1e-6 would be a grid of ~5e15 points (35 PiB): refused from its loss range alone.
    with pytest.raises(accounting.PLDTooLargeError, match="step grid"):
        accounting.pld_epsilon([(0.1, 1e-6, 10)], 1e-4)
    with pytest.raises(accounting.PLDTooLargeError, match="composition of 10000000000 steps"):
        accounting.pld_epsilon([(0.02, 3.0, 10 ** 10)], 1e-4)
    # The trainer's calibration obeys the same bound: σ from RDP, with a warning that says so.
    with pytest.warns(accounting.AccountantFallbackWarning, match="calibrated with the RDP accountant"):
        sigma = accounting.noise_multiplier_for_epsilon(target_epsilon=1.0, n_examples=1000, batch_size=100,
                                                        delta=1e-4, steps=10 ** 8, accountant="pld")
    assert sigma == pytest.approx(accounting.noise_multiplier_for_epsilon(
        target_epsilon=1.0, n_examples=1000, batch_size=100, delta=1e-4, steps=10 ** 8, accountant="rdp"))


def test_ledger_records_a_pld_fallback():
    led = accounting.PrivacyLedger(model_variant="dp", private=True, n_examples=1000, expected_batch_size=100,
                                   noise_multiplier=0.05, l2_norm_clip=1.0, delta=1e-4, accountant="pld")
    led.record_steps(10)
    with pytest.warns(accounting.AccountantFallbackWarning):
        led.end_epoch(1)
    js = led.to_json()
    assert js["accountant"] == "pld" and js["accountant_used"] == "rdp" and "work points" in js["accountant_note"]


# --- 4. invalid numbers are refused, never read as "unset" ---------------------------------------------------

@pytest.mark.parametrize("flag, value, names", [
    ("--batch-size", "0", "batch_size"), ("--epochs", "0", "epochs"), ("--learning-rate", "0", "learning_rate"),
    ("--l2-norm-clip", "0", "l2_norm_clip"), ("--noise-multiplier", "0", "noise_multiplier 0 adds no noise"),
    ("--target-epsilon", "0", "target_epsilon"), ("--delta", "0", "delta"), ("--members-fraction", "0",
                                                                             "members_fraction"),
    ("--direct-num-workers", "0", "direct_num_workers"), ("--seed", "-1", "seed"),
    ("--checkpoint-every", "-2", "checkpoint_every"), ("--max-auc", "1.5", "max_auc"),
    ("--reference-models", "1", "reference_models"), ("--audit-canaries", "-3", "audit_canaries"),
])
def test_run_refuses_zero_and_out_of_range_numbers_before_writing(tmp_path, capsys, flag, value, names):
    out = tmp_path / "out"
    rc, _, err = _main(capsys, "run", "--output-dir", str(out), flag, value)
    assert rc == 2 and names in err and "Traceback" not in err
    assert not out.exists()


def test_epsilon_noise_multiplier_zero_says_infinite(capsys):
    rc, out, err = _main(capsys, "epsilon", "--n", "1000", "--batch-size", "10", "--epochs", "1",
                         "--noise-multiplier", "0")
    assert rc == 2 and out == "" and "ε is infinite" in err


def test_run_batch_size_setting_reaches_the_variants():
    from privacy_audit.pipelines.run import build_variants, resolve_settings

    args = cli.build_parser().parse_args(["run", "--batch-size", "3"])
    assert {v.batch_size for v in build_variants(resolve_settings(args))} == {3}


# --- 5. SIGTERM / SIGINT stop Beam's workers ---------------------------------------------------------------

def _descendants(pid):
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_ends_its_worker_processes_and_says_so_on_one_line(tmp_path, sig):
    import psutil

    data = _digits_csv(tmp_path / "data", n=300)
    out = tmp_path / "out"
    proc = subprocess.Popen(CLI + ["run", "--output-dir", str(out), "--data", str(data), "--label-key", "label",
                                   "--epochs", "1", "--model", "mlp", "--attacks", "threshold",
                                   "--direct-num-workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = []
    deadline = time.time() + 400
    try:
        while time.time() < deadline and proc.poll() is None:
            kids = _descendants(proc.pid)
            if any("sdk_worker_main" in " ".join(k.cmdline()) for k in kids if k.is_running()):
                workers = kids
                break
            time.sleep(0.5)
        assert workers, "no Beam worker process appeared"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig
    lines = [line for line in err.strip().splitlines() if line.startswith("privacy-audit")]
    assert len(lines) == 1 and f"stopped by {signal.Signals(sig).name}" in lines[0], err[-2000:]
    assert "Traceback" not in err
    time.sleep(1)
    alive = [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    assert not alive, alive


# --- 6. tracebacks replaced by messages --------------------------------------------------------------------

@pytest.mark.parametrize("text, expect", [
    ("a: [1, 2\n", "not valid YAML at line"),
    ("epochs: !!python/object/apply:os.system ['touch PWNED']\n", "no tags such as !!python/object"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("1: 2\n", "setting names must be strings"),
])
def test_bad_config_files_give_one_line(tmp_path, capsys, text, expect):
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(text)
    rc, _, err = _main(capsys, "run", "--config", str(cfg), "--output-dir", str(tmp_path / "out"))
    assert rc == 2 and expect in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not os.path.exists("PWNED")


def test_too_long_output_dir_is_refused_without_partial_folders(tmp_path, capsys):
    long_dir = tmp_path / "/".join(["d" * 200] * 20)
    rc, _, err = _main(capsys, "run", "--output-dir", str(long_dir))
    assert rc == 2 and "--output-dir is" in err and "system allows" in err
    assert os.listdir(tmp_path) == []
    rc, _, err = _main(capsys, "run", "--output-dir", str(tmp_path / ("x" * 300)))
    assert rc == 2 and "folder name of 300 bytes" in err and os.listdir(tmp_path) == []


def test_attack_input_and_output_mistakes_give_one_line(tmp_path, capsys):
    src = _attack_inputs(tmp_path / "in.npz")
    np.save(tmp_path / "arr.npy", np.zeros(3))
    os.replace(tmp_path / "arr.npy", tmp_path / "arr.npz")
    rc, _, err = _main(capsys, "attack", "--input", str(tmp_path / "arr.npz"), "--output", str(tmp_path / "r.json"))
    assert rc == 2 and "not a .npz archive" in err and "single .npy array" in err
    rc, _, err = _main(capsys, "attack", "--input", str(src), "--output", str(tmp_path / ("r" * 300 + ".json")))
    assert rc == 2 and "file name is 305 bytes" in err
    (tmp_path / "adir").mkdir()
    t0 = time.time()
    rc, _, err = _main(capsys, "attack", "--input", str(src), "--output", str(tmp_path / "adir"))
    assert rc == 2 and "is a directory" in err and ".tmp" not in err
    assert sorted(os.listdir(tmp_path)) == ["adir", "arr.npz", "in.npz"] and os.listdir(tmp_path / "adir") == []


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "0"])
def test_epsilon_refuses_non_finite_epochs(capsys, value):
    rc, out, err = _main(capsys, "epsilon", "--n", "100", "--batch-size", "10", f"--epochs={value}",
                         "--noise-multiplier", "1")
    assert rc == 2 and "epochs must be a finite number > 0" in err and out == ""


# --- 7. messages that name the problem ---------------------------------------------------------------------

def test_string_labels_are_named_with_how_to_map_them(tmp_path, capsys):
    data = _digits_csv(tmp_path / "data", labels=lambda i: ["cat", "dog"][i % 2])
    rc, _, err = _main(capsys, "run", "--data", str(data), "--label-key", "label", "--output-dir",
                       str(tmp_path / "out"))
    assert rc == 2 and "digits.csv: row 1 (line 2) has label 'cat'" in err and "map string" in err
    # The reader of TFX Examples says the same for TFRecord data.
    import tensorflow as tf

    from privacy_audit.components.common.examples import parse_examples

    ex = tf.train.Example(features=tf.train.Features(feature={
        "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"cat"])),
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[1.0]))}))
    with pytest.raises(ValueError, match="holds strings.*map the strings to integers"):
        parse_examples([ex.SerializeToString()], "label")


def test_non_utf8_csv_names_file_offset_and_encoding(tmp_path, capsys):
    data = _digits_csv(tmp_path / "data")
    raw = (data / "digits.csv").read_bytes()
    cut = raw.index(b"\n", 1000) + 1
    (data / "digits.csv").write_bytes(raw[:cut] + b"\xe9" + raw[cut:])
    rc, _, err = _main(capsys, "run", "--data", str(data), "--label-key", "label", "--output-dir",
                       str(tmp_path / "out"))
    assert rc == 2 and "digits.csv is not UTF-8" in err and f"byte offset {cut}" in err and "0xe9" in err


def test_empty_label_cell_names_file_and_row(tmp_path, capsys):
    data = _digits_csv(tmp_path / "data", labels=lambda i: "" if i == 111 else str(i % 3))
    rc, _, err = _main(capsys, "run", "--data", str(data), "--label-key", "label", "--output-dir",
                       str(tmp_path / "out"))
    assert rc == 2 and "digits.csv: row 112 (line 113) has no value in the label column 'label'" in err


def test_too_small_data_names_the_default_and_the_minimum(tmp_path, capsys):
    data = _digits_csv(tmp_path / "data", n=10)
    rc, _, err = _main(capsys, "run", "--data", str(data), "--label-key", "label", "--output-dir",
                       str(tmp_path / "out"))
    # The DP demo variant's default batch is 128: with members_fraction 0.5 that needs 256 rows.
    assert rc == 2 and "data set is too small: 10 rows" in err and "default batch size 128" in err
    assert "at least 256 rows" in err
    rc, _, err = _main(capsys, "run", "--data", str(data), "--label-key", "label", "--batch-size", "64",
                       "--output-dir", str(tmp_path / "out"))
    assert rc == 2 and "your batch size 64" in err and not (tmp_path / "out").exists()


def test_run_refuses_delta_at_or_above_inverse_n(tmp_path, capsys):
    rc, _, err = _main(capsys, "run", "--delta", "0.002", "--output-dir", str(tmp_path / "out"))
    assert rc == 2 and "not below 1/N" in err and "releasing about one training example" in err
    rc, _, err = _main(capsys, "epsilon", "--n", "924", "--batch-size", "128", "--epochs", "1",
                       "--noise-multiplier", "1", "--delta", "0.002")
    assert rc == 2 and "not below 1/N" in err


def test_epsilon_default_delta_follows_the_rule(capsys):
    rc, out, _ = _main(capsys, "epsilon", "--n", "924", "--batch-size", "128", "--epochs", "1",
                       "--noise-multiplier", "1")
    assert rc == 0 and json.loads(out)["delta"] == 1e-4
    rc, out, _ = _main(capsys, "epsilon", "--n", "60000", "--batch-size", "256", "--epochs", "1",
                       "--noise-multiplier", "1")
    assert rc == 0 and json.loads(out)["delta"] == 1e-6


# --- 8. success where it should not be ---------------------------------------------------------------------

def test_attack_with_no_evaluable_slice_fails(tmp_path, capsys):
    src = _attack_inputs(tmp_path / "one.npz", n_members=1)
    rc, _, err = _main(capsys, "attack", "--input", str(src), "--output", str(tmp_path / "r.json"), "--quiet")
    assert rc == 2 and "no slice could be evaluated (1 members, 60 non-members" in err
    assert not (tmp_path / "r.json").exists()


def test_single_class_labels_are_refused(tmp_path, capsys):
    data = _digits_csv(tmp_path / "data", labels=lambda i: "4")
    rc, _, err = _main(capsys, "run", "--data", str(data), "--label-key", "label", "--output-dir",
                       str(tmp_path / "out"))
    assert rc == 2 and "holds a single class ([4])" in err and "meaningless with one class" in err
    # The trainer refuses it too (TFRecord data is not read before the pipeline).
    from privacy_audit.components.common.recipe import TrainingRecipe
    from privacy_audit.components.dp_trainer.trainer import train

    with pytest.raises(ValueError, match="single class"):
        train(TrainingRecipe(private=False, epochs=1, batch_size=2), np.zeros((8, 2)), np.full(8, 4),
              model_dir=str(tmp_path / "m"), run_dir=str(tmp_path / "r"))
    assert not (tmp_path / "m").exists()


# --- 9. fast argument errors, no empty output directory ----------------------------------------------------

def test_run_argument_errors_come_before_tensorflow_and_leave_no_directory(tmp_path):
    out = tmp_path / "out"
    code = ("import sys; from privacy_audit.pipelines import cli; rc = cli.main(sys.argv[1:]); "
            "print('TF', 'tensorflow' in sys.modules, 'tfx' in sys.modules); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "run", "--output-dir", str(out), "--epochs", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "epochs must be an integer" in r.stderr
    assert "TF False False" in r.stdout  # the settings were refused before TensorFlow/TFX were imported
    assert not out.exists()


@pytest.mark.medium
def test_a_privacy_profile_obeys_the_pld_work_bound_too():
    # Many δ of one composition (the DP region of issue 12) through one bounded composition.
    ok_events = [accounting.dp_sgd_event(0.01, 2.0, 50)]
    acc, used, note = accounting.composed_accountant(ok_events, "pld")
    assert used == "pld" and note is None
    for delta in (1e-3, 1e-5):
        assert acc.get_epsilon(delta) == pytest.approx(accounting.pld_epsilon([(0.01, 2.0, 50)], delta), rel=1e-12)
    acc, used, note = accounting.composed_accountant([accounting.dp_sgd_event(0.1, 0.05, 10)], "pld")
    assert used == "rdp" and "work points" in note
    assert acc.get_epsilon(1e-4) == pytest.approx(accounting.compute_epsilon(
        n_examples=1000, batch_size=100, noise_multiplier=0.05, delta=1e-4, steps=10))
