"""Issue 15: a short seeded fuzz of the config file and command-line values of `run`, `attack` and `epsilon`.

Random strings (with `../`, `/`, NUL, very long names) and numbers (0, negatives, NaN, ±inf, huge) for every
option. Whatever the values: exit status 0 or 2 only, never a traceback, one line of error, and nothing
created outside the output directory. `run` is exercised in-process up to the point where the pipeline would
start (its whole validation: settings, names, output directory, data); a few cases go through the real
entry point in a subprocess.
"""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from privacy_audit.pipelines import cli
from privacy_audit.pipelines import run as run_mod

SEED = 15
NUMBERS = ["0", "-1", "-0.5", "nan", "inf", "-inf", "1e308", "1e-308", "3", "0.5", "1", "99999999999999999999",
           "2.5", "1e9"]
STRINGS = ["../", "../../escape", "a/b", "/abs/path", "x" * 300, "nul\x00byte", "", ".", "..", "ok_name",
           "sp ace", "é", "-dash"]
RUN_NUMERIC = ["--epochs", "--members-fraction", "--batch-size", "--learning-rate", "--l2-norm-clip",
               "--noise-multiplier", "--target-epsilon", "--delta", "--checkpoint-every", "--reference-models",
               "--audit-canaries", "--max-auc", "--max-attacker-advantage", "--max-epsilon-lower-bound", "--seed",
               "--direct-num-workers"]
CONFIG_NUMERIC = ["epochs", "batch_size", "learning_rate", "members_fraction", "l2_norm_clip", "noise_multiplier",
                  "target_epsilon", "delta", "checkpoint_every", "min_slice_size", "max_auc", "seed",
                  "reference_models", "audit_canaries", "direct_num_workers"]
CONFIG_VALUES = [0, -1, 0.5, 3, 1e308, -1e308, 10 ** 30, True, "abc", None, [], {}, "nan", "../x"]


def _snapshot(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, ds, fs in os.walk(root) for n in ds + fs)


def _check(rc, err):
    assert rc in (0, 2), (rc, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    if rc == 2:
        errors = [line for line in err.strip().splitlines() if "error:" in line]
        assert len(errors) == 1, err[-2000:]


@pytest.fixture
def plan_only(monkeypatch):
    """`run` up to the pipeline: every check of the real command, then stop (exit 0) before writing."""
    monkeypatch.setattr(run_mod, "_main_run", lambda args: (run_mod.plan_run(args), 0)[1])


def _main(capsys, argv):
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse refuses what it cannot parse: exit 2 with its usage line
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_fuzz_run_options_and_config_values(tmp_path, capsys, plan_only):
    rng = random.Random(SEED)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    out = sandbox / "out"
    before = _snapshot(tmp_path)
    for i in range(120):
        argv = ["run", "--output-dir", str(out)]
        for flag in rng.sample(RUN_NUMERIC, rng.randint(0, 2)):
            argv.append(f"{flag}={rng.choice(NUMBERS)}")
        if rng.random() < 0.5:
            cfg = {k: rng.choice(CONFIG_VALUES) for k in rng.sample(CONFIG_NUMERIC, rng.randint(1, 3))}
            if rng.random() < 0.5:
                cfg["variants"] = [{"name": rng.choice(STRINGS), "private": rng.random() < 0.5,
                                    rng.choice(CONFIG_NUMERIC[:8]): rng.choice(CONFIG_VALUES)}]
            if rng.random() < 0.3:
                cfg["pipeline_name"] = rng.choice(STRINGS)
            path = sandbox / f"cfg{i}.json"
            path.write_text(json.dumps(cfg, allow_nan=True))
            argv += ["--config", str(path)]
        rc, _, err = _main(capsys, argv)
        _check(rc, err)
    created = set(_snapshot(tmp_path)) - set(before)
    assert all(p.startswith("sandbox/cfg") for p in created), sorted(created)[:10]


def test_fuzz_run_path_like_values(tmp_path, capsys, plan_only):
    rng = random.Random(SEED + 1)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    before = _snapshot(tmp_path)
    for _ in range(40):
        name = rng.choice(STRINGS) + rng.choice(["", "/", "/../..", "x" * rng.randint(0, 400)])
        flag = rng.choice(["--output-dir", "--data", "--examples", "--config", "--module-file", "--label-key"])
        argv = ["run", "--output-dir", str(sandbox / "out")]
        argv += [flag, name if flag == "--label-key" else str(sandbox / name) if name else name]
        rc, _, err = _main(capsys, argv)
        _check(rc, err)
    assert _snapshot(tmp_path) == before


@pytest.mark.medium
def test_fuzz_epsilon_values(capsys):
    rng = random.Random(SEED + 2)
    for _ in range(40):
        argv = ["epsilon", f"--n={rng.choice(['1000', '0', '-5', '1', '60000', '10'])}",
                f"--batch-size={rng.choice(['100', '0', '-1', '1', '1000', '100000'])}",
                rng.choice([f"--epochs={rng.choice(NUMBERS)}", f"--steps={rng.choice(['0', '-3', '10', '1'])}"]),
                rng.choice([f"--noise-multiplier={rng.choice(NUMBERS)}", f"--target-epsilon={rng.choice(NUMBERS)}"]),
                f"--accountant={rng.choice(['rdp', 'pld'])}"]
        if rng.random() < 0.4:
            argv.append(f"--delta={rng.choice(NUMBERS)}")
        rc, out, err = _main(capsys, argv)
        _check(rc, err)
        if rc == 0:
            got = json.loads(out)
            assert got["epsilon"] >= 0 and got["noise_multiplier"] > 0 and got["delta"] < 1


def test_fuzz_attack_values(tmp_path, capsys):
    rng = random.Random(SEED + 3)
    data = np.random.default_rng(SEED)
    src = tmp_path / "in.npz"
    np.savez(src, logits_train=data.normal(size=(40, 3)), logits_test=data.normal(size=(40, 3)),
             labels_train=data.integers(0, 3, 40), labels_test=data.integers(0, 3, 40))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = _snapshot(tmp_path)
    for _ in range(25):
        name = rng.choice(["r.json", "sub/r.json", "x" * 300 + ".json", "nul\x00.json", "", "in.npz"])
        argv = ["attack", "--input", str(src), "--output", str(out_dir / name) if name != "in.npz" else str(src),
                "--attacks", "threshold", "--quiet"]
        for flag in rng.sample(["--seed", "--min-slice-size", "--delta", "--confidence", "--folds", "--epoch"],
                               rng.randint(0, 3)):
            argv.append(f"{flag}={rng.choice(NUMBERS)}")
        rc, _, err = _main(capsys, argv)
        _check(rc, err)
    created = set(_snapshot(tmp_path)) - set(before)
    assert all(p.startswith("out") for p in created), created


def test_fuzz_through_the_real_entry_point(tmp_path):
    rng = random.Random(SEED + 4)
    for _ in range(3):
        argv = ["run", "--output-dir", str(tmp_path / "out"), f"{rng.choice(RUN_NUMERIC)}={rng.choice(NUMBERS[:7])}"]
        r = subprocess.run([sys.executable, "-m", "privacy_audit.pipelines.cli", *argv], capture_output=True,
                           text=True, timeout=120)
        _check(r.returncode, r.stderr)
        assert r.returncode == 2
    assert os.listdir(tmp_path) == []
