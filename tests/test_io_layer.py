"""common.io, the one I/O layer: the same calls on a local disk and on a non-local tf.io.gfile scheme (ram://),
atomic writes that leave nothing partial under a final name, and a grep-level check that components/ does
its artifact file I/O through it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from privacy_audit.components.common import io

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", "ram"])
def base(request, tmp_path):
    uri = str(tmp_path / "store") if request.param == "local" else f"ram://io-test-{tmp_path.name}"
    yield uri
    io.rmtree(uri)


def test_json_npz_parquet_round_trip_and_listing(base):
    import pyarrow as pa

    io.write_json(io.join(base, "a", "x.json"), {"auc": 0.5})
    io.save_npz(io.join(base, "a", "s.npz"), {"logits": np.arange(6.0).reshape(2, 3)})
    io.write_parquet(io.join(base, "b", "t.parquet"), pa.table({"loss": [0.1, 0.2]}))
    assert io.read_json(io.join(base, "a", "x.json")) == {"auc": 0.5}
    np.testing.assert_array_equal(io.load_npz(io.join(base, "a", "s.npz"))["logits"], np.arange(6.0).reshape(2, 3))
    assert io.read_parquet(io.join(base, "b", "t.parquet")).to_pydict() == {"loss": [0.1, 0.2]}
    assert io.listdir(io.join(base, "a")) == ["s.npz", "x.json"]  # no temporary file left
    assert io.glob(io.join(base, "a", "*.json")) == [io.join(base, "a", "x.json")]
    io.copytree(io.join(base, "a"), io.join(base, "c"))
    assert io.listdir(io.join(base, "c")) == ["s.npz", "x.json"]
    io.rmtree(io.join(base, "c"))
    assert not io.exists(io.join(base, "c"))


def test_no_overwrite_keeps_the_first_file(base):
    path = io.join(base, "h", "run.json")
    io.write_json(path, {"run": 1}, overwrite=False)
    with pytest.raises(FileExistsError):
        io.write_json(path, {"run": 2}, overwrite=False)
    assert io.read_json(path) == {"run": 1}
    assert io.listdir(io.join(base, "h")) == ["run.json"]


def test_a_write_that_dies_midway_leaves_no_file_under_the_final_name(base, monkeypatch):
    path = io.join(base, "r", "summary.json")
    io.write_json(path, {"old": True})

    def crash(tmp, data):  # the temporary file holds half the data when the "process dies"
        with io.open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "_write_plain", crash)
    with pytest.raises(KeyboardInterrupt):
        io.write_files([(path, b'{"new": true}'), (io.join(base, "r", "report.html"), b"<html>")])
    monkeypatch.undo()
    assert io.read_json(path) == {"old": True}  # the earlier file stays whole
    assert io.listdir(io.join(base, "r")) == ["summary.json"]


# Patterns of direct file-system access that must not touch artifact paths in components/.
FORBIDDEN = re.compile(r"(?<![\w.])open\(|os\.makedirs|glob\.glob|\bshutil\b|tempfile\.mkstemp|os\.replace")
# User-given local files (a module file the user names, the attack CLI's input/output files), scratch work
# that is not an artifact, and the I/O layer itself.
ALLOWED = {
    "components/common/io.py": "the I/O layer",
    "components/dp_trainer/component.py": "hashes the user's module file (local, named by the user)",
    "components/dp_trainer/models.py": "loads the user's module file",
    "components/reference_models/component.py": "reads the user's trainer module file",
    "components/membership_inference/api.py": "the attack CLI's user-given local input/output files",
    "components/common/memory.py": "reads the kernel's /proc/meminfo and cgroup files (not artifacts)",
}


def test_components_do_artifact_io_through_the_io_layer():
    offenders = []
    for path in sorted((ROOT / "components").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if FORBIDDEN.search(code) and not code.lstrip().startswith(("\"", "'")):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "direct file I/O on artifact paths (use components/common/io.py):\n" + "\n".join(offenders)
