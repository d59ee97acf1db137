"""Checks of user-given settings and data, run before anything is imported from TensorFlow/TFX or written.

Every entry (the `run` command line, a config file, the Python API of the pipeline) goes through the same
functions, so that a bad value is refused once, at the root, with a message that names it:

- :func:`check_path_name`: names that become folder or component names (variants, the pipeline);
- :func:`check_run_settings`: every numeric and enumerated setting of `privacy-audit run` (0, negatives, NaN,
  ±inf, booleans and strings where numbers belong, out-of-range values);
- :func:`check_output_dir`: an output directory the system can hold the pipeline's paths under;
- :func:`check_csv_data`: CSV files readable as UTF-8, with an integer label in every row, two classes at least,
  and enough rows for the batch size.

Only the standard library is imported here.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import numbers
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

# Folder and component-id friendly: no separators, no leading dot (so never "." or ".."), no control bytes.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def check_path_name(what: str, name: Any) -> str:
    """Returns ``name`` when it is a safe folder/component name; ValueError naming ``what`` otherwise.

    A safe name is 1-63 characters of letters, digits, ``_``, ``-`` and ``.``, starting with a letter or digit:
    it can never leave its parent folder (no ``/``, ``\\``, ``..`` or NUL) nor nest folders.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:77] + "...")
        raise ValueError(f"{what} {shown} is not a valid name: it names folders under the output directory, so "
                         "it must be 1-63 characters of letters, digits, '_', '-' or '.', starting with a letter "
                         "or digit (no '/', '..', spaces or control characters)")
    return name


def _is_number(v: Any) -> bool:
    # numbers.Real takes numpy's scalars too; a bool is a number to Python but never a count or a rate here.
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and type(v).__name__ != "bool_"


def _number(key: str, v: Any, *, lo: float, hi: float = math.inf, lo_open: bool = False,
            integer: bool = False, hi_open: bool = False) -> None:
    """ValueError naming ``key`` unless v is a finite number in the range (an integer when ``integer``)."""
    kind = "an integer" if integer else "a number"
    lo_s = f"{'>' if lo_open else '>='} {lo:g}"
    rng = lo_s if hi == math.inf else f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    ok = _is_number(v) and math.isfinite(v) and (v > lo if lo_open else v >= lo) and \
        (v < hi if hi_open else v <= hi) and (not integer or float(v).is_integer())
    if not ok:
        raise ValueError(f"{key} must be {kind} {rng}, got {v!r}")


# key: (lo, hi, lo_open, hi_open, integer). None values mean "unset" and are not checked here.
_NUMERIC: Dict[str, Tuple[float, float, bool, bool, bool]] = {
    "epochs": (1, 100_000, False, False, True),
    "batch_size": (1, 10 ** 9, False, False, True),
    "learning_rate": (0, 1e3, True, False, False),
    "members_fraction": (0, 1, True, True, False),
    "l2_norm_clip": (0, 1e6, True, False, False),
    "noise_multiplier": (0, 1e6, True, False, False),
    "target_epsilon": (0, 1e6, True, False, False),
    "delta": (0, 1, True, True, False),
    "checkpoint_every": (0, 100_000, False, False, True),
    "min_slice_size": (1, 10 ** 9, False, False, True),
    "max_auc": (0, 1, False, False, False),
    "max_attacker_advantage": (0, 1, False, False, False),
    "max_epsilon_lower_bound": (0, 1e6, False, False, False),
    "reference_models": (0, 1024, False, False, True),
    "audit_canaries": (0, 10 ** 7, False, False, True),
    "seed": (0, 2 ** 31 - 1, False, False, True),
    "direct_num_workers": (1, 256, False, False, True),
}
_CHOICES = {"optimizer": ("adam", "sgd"), "lr_schedule": ("constant", "cosine"), "sampling": ("poisson", "shuffle"),
            "accountant": ("rdp", "pld"), "reference_init": ("target", "independent")}
_STRINGS = ("data", "examples", "label_key", "module_file", "model_fn", "model", "title")
_LISTS = ("feature_keys", "attacks", "slicing", "slice_feature_keys", "reference_attacks", "beam_pipeline_args")


def _check_values(where: str, values: Mapping[str, Any]) -> None:
    if values.get("noise_multiplier") == 0 and _is_number(values["noise_multiplier"]):
        raise ValueError(f"{where}noise_multiplier 0 adds no noise (ε is infinite): give σ > 0, or private: false "
                         "for a non-private baseline")
    for key, (lo, hi, lo_open, hi_open, integer) in _NUMERIC.items():
        v = values.get(key)
        if v is not None:
            _number(f"{where}{key}", v, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, integer=integer)
    for key, choices in _CHOICES.items():
        v = values.get(key)
        if v is not None and v not in choices:
            raise ValueError(f"{where}{key} must be one of {list(choices)}, got {v!r}")
    for key in _STRINGS:
        v = values.get(key)
        if v is not None and (not isinstance(v, str) or not v or "\x00" in v):
            raise ValueError(f"{where}{key} must be a non-empty string without NUL bytes, got {v!r}")
    for key in _LISTS:
        v = values.get(key)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) and "\x00" not in x for x in v)):
            raise ValueError(f"{where}{key} must be a list of strings, got {v!r}")
    for key in ("hparams", "reference_options"):
        v = values.get(key)
        if v is not None and not isinstance(v, dict):
            raise ValueError(f"{where}{key} must be a mapping, got {v!r}")
    if "private" in values and not isinstance(values["private"], bool):
        raise ValueError(f"{where}private must be true or false, got {values['private']!r}")


def check_run_settings(settings: Mapping[str, Any]) -> None:
    """ValueError naming the first invalid setting of `privacy-audit run` (top level, then each variant).

    Checks types and ranges only; what needs the data (δ < 1/N, batch size <= N) is checked with the data.
    """
    _check_values("", settings)
    if settings.get("reference_models") == 1:
        raise ValueError("reference_models must be 0 (off) or >= 2, got 1")
    if settings.get("audit_canaries") == 1:
        raise ValueError("audit_canaries must be 0 (off) or >= 2, got 1")
    if settings.get("pipeline_name") is not None:
        check_path_name("pipeline_name", settings["pipeline_name"])
    variants = settings.get("variants")
    if variants is None:
        return
    if not isinstance(variants, list) or not variants:
        raise ValueError(f"variants must be a non-empty list of mappings, got {variants!r}")
    names: List[str] = []
    for i, v in enumerate(variants):
        if not isinstance(v, dict):
            raise ValueError(f"variants[{i}] must be a mapping with a name, got {v!r}")
        names.append(check_path_name(f"variants[{i}].name", v.get("name")))
        _check_values(f"variants[{i}].", v)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"variant names must be unique, {dup} appear more than once")


# Deepest path the pipeline writes below the output directory (pipeline_root/<component id>/<output>/<exec id>/
# Format-Serving/variables/variables.data-00000-of-00001 and the like), with room for long variant names.
OUTPUT_PATH_RESERVE = 512


def check_output_dir(path: str) -> str:
    """The absolute output directory if the system can hold the pipeline's files below it (path and name
    length limits) and it is not a file; ValueError/NotADirectoryError naming it otherwise. Creates nothing."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise ValueError(f"--output-dir must be a non-empty path without NUL bytes, got {path!r}")
    if "://" in path:  # a bucket (gs://, s3://): checked for writability before training (common.io)
        return path.rstrip("/")
    full = os.path.abspath(path)
    try:
        path_max = os.pathconf("/", "PC_PATH_MAX")
        name_max = os.pathconf("/", "PC_NAME_MAX")
    except (OSError, ValueError):  # pragma: no cover - platforms without pathconf
        path_max, name_max = 4096, 255
    long_part = next((p for p in full.split(os.sep) if len(p.encode()) > name_max), None)
    if long_part is not None:
        raise ValueError(f"--output-dir has a folder name of {len(long_part.encode())} bytes "
                         f"({long_part[:40]}...): the system allows {name_max}")
    if len(full.encode()) + OUTPUT_PATH_RESERVE > path_max:
        raise ValueError(f"--output-dir is {len(full.encode())} bytes long: the pipeline writes paths up to "
                         f"~{OUTPUT_PATH_RESERVE} bytes below it and the system allows {path_max} in all; choose a "
                         f"path shorter than {path_max - OUTPUT_PATH_RESERVE} bytes")
    if os.path.exists(full) and not os.path.isdir(full):
        raise NotADirectoryError(f"output directory {full} exists and is a file")
    return full


# Past this size only the first rows of a CSV are scanned for labels (the header and encoding of all of it).
CSV_FULL_SCAN_BYTES = 200 * 2 ** 20
CSV_SCAN_ROWS = 200_000


def _decoded_lines(path: str) -> Iterable[str]:
    """The file's text, UTF-8 decoded chunk by chunk; ValueError with the byte offset of the first bad byte."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            pending = decoder.getstate()[0]  # bytes of a character cut at the previous chunk's end
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                bad = offset - len(pending) + e.start
                raise ValueError(f"{path} is not UTF-8 text: byte 0x{e.object[e.start]:02x} at byte offset {bad} "
                                 "cannot be decoded; CSV data must be UTF-8 (convert it, e.g. "
                                 "`iconv -f latin1 -t utf-8`)") from None
            offset += len(chunk)
            if text:
                yield text
            if not chunk:
                return


def _csv_rows(path: str):
    buf = io.StringIO()
    for text in _decoded_lines(path):
        buf.write(text)
        if buf.tell() > (1 << 22):  # parse in pieces, keeping a partial last line for the next one
            whole = buf.getvalue()
            cut = whole.rfind("\n") + 1
            yield from csv.reader(io.StringIO(whole[:cut]))
            buf = io.StringIO()
            buf.write(whole[cut:])
    yield from csv.reader(io.StringIO(buf.getvalue()))


# A cell CsvExampleGen reads as a number (int or float, as Python's float() takes them), surrounding blanks allowed.
_NUMBER = (r"^\s*[-+]?(?:(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d+)?|nan|inf|infinity)\s*$")


def _type_change(path: str, header: List[str]) -> Optional[str]:
    """The first cell of a column that held numbers in every earlier row but text here (a CSV whose column
    changes type halfway): ``"<path>: row <i> ..."``, or None. Read by pyarrow in blocks (C++), so that a
    million-row file is checked in seconds; a file pyarrow cannot parse is left to CsvExampleGen's error."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    try:
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 24),
                                convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                                                     strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    numeric = {}  # column -> True while every non-empty cell so far was a number (and there was one)
    done = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return None
        except pa.ArrowInvalid:
            return None
        for name, col in zip(batch.schema.names, batch.columns):
            if numeric.get(name) is False:
                continue
            filled = pc.not_equal(pc.utf8_trim_whitespace(col), "")
            text = pc.and_(filled, pc.invert(pc.match_substring_regex(col, _NUMBER, ignore_case=True)))
            first_text = pc.index(text, True).as_py()
            if first_text < 0:
                numeric[name] = numeric.get(name) or bool(pc.any(filled).as_py())
                continue
            first_number = pc.index(pc.and_(filled, pc.invert(text)), True).as_py()
            if numeric.get(name) or 0 <= first_number < first_text:
                row = done + first_text + 1
                value = col[first_text].as_py()
                return (f"{path}: column {name!r} holds numbers up to row {row - 1} but {value[:40]!r} at row {row} "
                        f"(line {row + 1}): a column must keep one type (CsvExampleGen would read the whole column as "
                        f"text); fix or drop that row, or make the column text throughout")
            numeric[name] = False
        done += batch.num_rows


def check_csv_data(data_root: str, label_key: str) -> Dict[str, Any]:
    """Checks the CSV files of ``data_root`` before any component runs; returns ``{"rows", "classes"}``.

    ValueError naming the file and row for: no CSV/TFRecord files, an empty file, a file that is not UTF-8
    (with the byte offset), a missing label column, an empty label cell, a label that is not an integer class
    index (strings: say how to map them), a column of numbers that turns to text at some row (the row and
    column), and a single class in the whole data set. ``rows`` is None for TFRecord data (not read here).
    """
    names = sorted(os.listdir(data_root))
    csvs = [f for f in names if f.endswith(".csv")]
    if not csvs:
        if any(".tfrecord" in f for f in names):
            return {"rows": None, "classes": None}
        raise ValueError(f"no CSV or TFRecord files in {data_root}")
    rows, classes = 0, set()
    for name in csvs:
        path = os.path.join(data_root, name)
        full = os.path.getsize(path) <= CSV_FULL_SCAN_BYTES
        reader = _csv_rows(path)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path} is empty")
        if label_key not in header:
            raise ValueError(f"{path} has no label column {label_key!r} "
                             f"(columns: {header[:10]}{'...' if len(header) > 10 else ''})")
        col = header.index(label_key)
        for i, row in enumerate(reader, start=1):
            if not row:
                continue
            rows += 1
            if not full and i > CSV_SCAN_ROWS:
                continue
            cell = row[col].strip() if col < len(row) else ""
            if not cell:
                raise ValueError(f"{path}: row {i} (line {i + 1}) has no value in the label column {label_key!r}")
            try:
                value = float(cell)
                if not value.is_integer() or value < 0:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"{path}: row {i} (line {i + 1}) has label {cell[:40]!r} in column {label_key!r}; the label "
                    "must be an integer class index 0..K-1: map string or fractional labels to integers first "
                    "(e.g. cat → 0, dog → 1)") from None
            classes.add(int(value))
        change = _type_change(path, header)
        if change:
            raise ValueError(change)
    if len(classes) < 2:
        raise ValueError(f"the label column {label_key!r} in {data_root} holds a single class "
                         f"({sorted(classes)}): membership inference and accuracy are meaningless with one class; "
                         "give data with at least two classes")
    return {"rows": rows, "classes": len(classes)}
