"""The one I/O layer for artifact files: local paths, and object stores (gs://, s3://, ...) through TensorFlow's
``tf.io.gfile`` (what TFX's ``fileio`` uses underneath; this module imports no tfx).

Local paths go straight to the operating system (no TensorFlow import, fsync + ``os.replace``); any path with a
scheme (``gs://``, ``s3://``, ``ram://`` ...) goes to ``tf.io.gfile``, imported on first use.

Atomic writes: the data goes to a temporary name in the same directory (``.<name>.tmp-<random>``), and is then
renamed to its final name, so a reader (or a run killed midway) never sees a partial file under the final name.
On a local disk the rename is atomic. On an object store a "rename" is a server-side copy then a delete of the
temporary object: the final object still appears whole (an object becomes visible only once its upload is
complete), but a crash between the copy and the delete can leave a ``.tmp-`` object behind, which readers skip
(:func:`glob`/:func:`listdir` callers filter on their own names). :func:`write_bytes` with ``overwrite=False``
refuses to replace an existing file (locally with ``os.link``, which fails atomically; on object stores with an
existence check before the copy, so two writers racing for one name within milliseconds are only prevented by
the callers choosing unique names, as the audit history does).

Writing npz and Parquet goes through in-memory buffers / file objects, never through a local path, so the same
call works on every scheme.
"""

from __future__ import annotations

import builtins
import contextlib
import io as _pyio
import json
import os
import posixpath
import shutil
import uuid
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional, Sequence

# tensorflow-io-gcs-filesystem 0.37.1 (the gs:// plugin TensorFlow loads with TF_USE_MODULAR_FILESYSTEM=1)
# passes getenv() of these variables to a string_view without a null check: the process dies with SIGSEGV on
# the first gs:// call unless all are set. The values are the plugin's documented meaning of "no caching"
# (block size in MB; caches off, so a file written by one process is seen at once by the next).
_GCS_PLUGIN_ENV = {"GCS_READ_CACHE_BLOCK_SIZE_MB": "0", "GCS_READ_CACHE_MAX_SIZE_MB": "0",
                   "GCS_READ_CACHE_MAX_STALENESS": "0", "GCS_STAT_CACHE_MAX_AGE": "0",
                   "GCS_STAT_CACHE_MAX_ENTRIES": "0"}
# Set on import as well: TFX's own fileio may reach gs:// before this module's first call in a process.
for _key, _value in _GCS_PLUGIN_ENV.items():
    os.environ.setdefault(_key, _value)
TEMP_MARK = ".tmp-"


def is_remote(path: str) -> bool:
    """True for a URI with a scheme (``gs://bucket/x``), False for a local path."""
    return "://" in os.fspath(path)


def _gfile():
    for key, value in _GCS_PLUGIN_ENV.items():
        os.environ.setdefault(key, value)
    import tensorflow as tf

    return tf.io.gfile


def join(base: str, *parts: str) -> str:
    """Path join that keeps ``/`` separators in URIs."""
    base = os.fspath(base)
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def dirname(path: str) -> str:
    path = os.fspath(path)
    return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(os.path.abspath(path))


def basename(path: str) -> str:
    path = os.fspath(path)
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


def exists(path: str) -> bool:
    """Whether a file or directory exists (on object stores: an object, or a prefix with objects under it)."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.exists(path)
    g = _gfile()
    return g.exists(path) or g.isdir(path)


def size(path: str) -> int:
    """A file's size in bytes."""
    path = os.fspath(path)
    return int(_gfile().stat(path).length) if is_remote(path) else os.path.getsize(path)


def isdir(path: str) -> bool:
    path = os.fspath(path)
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.isfile(path)
    g = _gfile()
    return g.exists(path) and not g.isdir(path)


def makedirs(path: str) -> None:
    """Creates a directory and its parents; no error when it exists."""
    path = os.fspath(path)
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> List[str]:
    """Sorted entry names of a directory (no trailing ``/`` on sub-directories)."""
    path = os.fspath(path)
    names = _gfile().listdir(path) if is_remote(path) else os.listdir(path)
    return sorted(n.rstrip("/") for n in names)


def glob(pattern: str) -> List[str]:
    """Sorted paths matching a glob pattern (``*``, ``?``, ``[...]`` in the last components)."""
    pattern = os.fspath(pattern)
    if is_remote(pattern):
        return sorted(_gfile().glob(pattern))
    import glob as _glob

    return sorted(_glob.glob(pattern))


def remove(path: str, missing_ok: bool = True) -> None:
    """Deletes one file."""
    path = os.fspath(path)
    try:
        if is_remote(path):
            _gfile().remove(path)
        else:
            os.remove(path)
    except (FileNotFoundError, _not_found_error()):
        if not missing_ok:
            raise


def rmtree(path: str) -> None:
    """Deletes a directory tree; no error when it does not exist."""
    path = os.fspath(path)
    if is_remote(path):
        g = _gfile()
        if g.isdir(path):
            g.rmtree(path)
        elif g.exists(path):
            g.remove(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _not_found_error():
    try:
        import tensorflow as tf

        return tf.errors.NotFoundError
    except ImportError:  # pragma: no cover - TensorFlow is there whenever a remote path is used
        return FileNotFoundError


def copy(src: str, dst: str, overwrite: bool = True) -> None:
    """Copies one file, between any two schemes (an upload when ``src`` is local and ``dst`` remote)."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_remote(src) and not is_remote(dst):
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(dst)
        shutil.copyfile(src, dst)
    else:
        _gfile().copy(src, dst, overwrite=overwrite)


def copytree(src: str, dst: str) -> None:
    """Copies every file under ``src`` to the same relative path under ``dst`` (files there are replaced)."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_remote(src) and not is_remote(dst):
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return
    for root, _, files in walk(src):
        rel = os.path.relpath(root, src) if not is_remote(src) else root[len(src.rstrip("/")):].strip("/")
        target = dst if rel in ("", ".") else join(dst, *rel.replace(os.sep, "/").split("/"))
        makedirs(target)
        for name in files:
            copy(join(root, name), join(target, name), overwrite=True)


def walk(top: str) -> Iterator:
    """``(directory, sub-directory names, file names)`` for every directory under ``top``."""
    top = os.fspath(top)
    if is_remote(top):
        for root, dirs, files in _gfile().walk(top):
            yield root.rstrip("/"), [d.rstrip("/") for d in dirs], list(files)
    else:
        yield from os.walk(top)


def rename(src: str, dst: str, overwrite: bool = False) -> None:
    """Renames a file (on object stores: copy, then delete). Raises FileExistsError when ``dst`` exists
    and ``overwrite`` is False."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_remote(src):
        if overwrite:
            os.replace(src, dst)
        else:
            os.link(src, dst)  # fails atomically when dst exists, unlike os.rename
            os.remove(src)
        return
    g = _gfile()
    if not overwrite and g.exists(dst):
        raise FileExistsError(dst)
    try:
        g.rename(src, dst, overwrite=overwrite)
    except _already_exists_error() as e:
        raise FileExistsError(dst) from e


def _already_exists_error():
    import tensorflow as tf

    return tf.errors.AlreadyExistsError


@contextlib.contextmanager
def open(path: str, mode: str = "r") -> Iterator[IO]:  # noqa: A001 - the module's file-object entry point
    """A file object for reading (``r``, ``rb``) or, non-atomically, writing (``w``, ``wb``)."""
    path = os.fspath(path)
    if is_remote(path):
        with _gfile().GFile(path, mode) as f:
            yield f
    else:
        with _builtin_open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f


_builtin_open = builtins.open


def _temp_name(path: str) -> str:
    return join(dirname(path), f".{basename(path)}{TEMP_MARK}{uuid.uuid4().hex[:12]}")


def write_bytes(path: str, data: bytes, *, overwrite: bool = True) -> str:
    """Writes ``data`` to ``path`` atomically (see the module doc); creates the parent directory.

    With ``overwrite=False`` an existing ``path`` is never replaced: FileExistsError, and the temporary
    file is removed. Returns ``path``.
    """
    path = os.fspath(path)
    makedirs(dirname(path))
    tmp = _temp_name(path)
    try:
        _write_plain(tmp, data)
        rename(tmp, path, overwrite=overwrite)
    except BaseException:
        remove(tmp)
        raise
    return path


def write_files(items: Sequence[tuple], *, overwrite: bool = True) -> List[str]:
    """Writes several ``(path, bytes)`` files: every one to its temporary name first, and only when all are
    complete are they renamed, in the given order (so an earlier set of files stays intact until the new one
    is ready; put the file readers open first, e.g. an index or report.html, last). Returns the paths."""
    temps: List[tuple] = []
    try:
        for path, data in items:
            path = os.fspath(path)
            makedirs(dirname(path))
            tmp = _temp_name(path)
            temps.append((tmp, path))
            _write_plain(tmp, data)
        for tmp, path in temps:
            rename(tmp, path, overwrite=overwrite)
    except BaseException:
        for tmp, _ in temps:
            remove(tmp)
        raise
    return [path for _, path in temps]


def _write_plain(path: str, data: bytes) -> None:
    if is_remote(path):
        with _gfile().GFile(path, "wb") as f:
            f.write(data)
        return
    with _builtin_open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    # Artifacts are read by other users and services: no private file modes.
    os.chmod(path, 0o644)


def write_text(path: str, text: str, *, overwrite: bool = True) -> str:
    """UTF-8 text to ``path``, atomically."""
    return write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def write_json(path: str, obj: Any, *, indent: Optional[int] = 2, overwrite: bool = True) -> str:
    """Strict JSON (no NaN/Infinity) to ``path``, atomically, with a final newline."""
    text = json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False)
    return write_text(path, text + "\n", overwrite=overwrite)


def read_bytes(path: str) -> bytes:
    """The whole file; FileNotFoundError (on every scheme) when it does not exist."""
    path = os.fspath(path)
    if is_remote(path):
        import tempfile

        try:
            # Downloaded whole to a local file, then read: GFile.read() of objects above ~200 KB aborts the
            # process with heap corruption in tensorflow-io-gcs-filesystem 0.37.1 (measured against a GCS
            # emulator; gfile.copy, which downloads in one stream, does not).
            with tempfile.TemporaryDirectory(prefix="read-") as d:
                local = os.path.join(d, "object")
                _gfile().copy(path, local, overwrite=True)
                with _builtin_open(local, "rb") as f:
                    return f.read()
        except _not_found_error():
            raise FileNotFoundError(f"no such file: {path}") from None
    with _builtin_open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any:
    """The parsed JSON of a file (ValueError when it is not valid JSON, OSError-like when missing)."""
    return json.loads(read_text(path))


def save_npz(path: str, arrays: Mapping[str, Any]) -> str:
    """``np.savez`` of ``arrays`` to ``path`` through a memory buffer, atomically."""
    import numpy as np

    buf = _pyio.BytesIO()
    np.savez(buf, **arrays)
    return write_bytes(path, buf.getvalue())


def load_npz(path: str) -> Dict[str, Any]:
    """Every array of an ``.npz`` file (pickled object arrays refused)."""
    import numpy as np

    with np.load(_pyio.BytesIO(read_bytes(path)), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_parquet(path: str, table: Any, **kwargs: Any) -> str:
    """A ``pyarrow.Table`` to ``path`` as Parquet, atomically (written to a buffer first)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **kwargs)
    return write_bytes(path, sink.getvalue().to_pybytes())


def read_parquet(path: str, columns: Optional[Sequence[str]] = None) -> Any:
    """A Parquet file as a ``pyarrow.Table`` (only ``columns`` when given)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not is_remote(path):
        return pq.read_table(os.fspath(path), columns=list(columns) if columns else None)
    return pq.read_table(pa.BufferReader(read_bytes(path)), columns=list(columns) if columns else None)


@contextlib.contextmanager
def local_staging(final_dir: str, prefix: str = "stage-") -> Iterator[str]:
    """A local directory to write a tree into (a SavedModel export, a Keras file), published to ``final_dir``
    when the block ends without error. Locally the staging directory sits beside ``final_dir`` and replaces
    it with one rename; on an object store it is a local temporary directory whose files are then uploaded
    (the old tree is deleted first, so a crash midway leaves a partial tree: callers write the files readers
    check for, such as an index, last)."""
    import tempfile

    final_dir = os.fspath(final_dir)
    if is_remote(final_dir):
        with tempfile.TemporaryDirectory(prefix=prefix) as staging:
            yield staging
            rmtree(final_dir)
            copytree(staging, final_dir)
        return
    parent = os.path.dirname(os.path.abspath(final_dir))
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(final_dir)}{TEMP_MARK}{uuid.uuid4().hex[:12]}")
    try:
        yield staging
        old = staging + ".old"
        if os.path.exists(final_dir):
            os.replace(final_dir, old)
        os.replace(staging, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def local_file(final_path: str, suffix: str = "") -> Iterator[str]:
    """A local path to write one file into with a library that wants a file name (``model.save``); the file
    is moved (or uploaded) to ``final_path`` atomically when the block ends without error."""
    import tempfile

    final_path = os.fspath(final_path)
    if not is_remote(final_path):
        os.makedirs(os.path.dirname(os.path.abspath(final_path)), exist_ok=True)
        tmp = _temp_name(final_path) + suffix
        try:
            yield tmp
            os.replace(tmp, final_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="upload-") as d:
        tmp = os.path.join(d, "file" + suffix)
        yield tmp
        write_bytes(final_path, read_bytes(tmp))


def check_writable(uri: str) -> None:
    """Raises OSError naming ``uri`` when a file cannot be created under it (a bucket that does not exist or
    cannot be reached): called before any training starts, so a wrong pipeline root fails in seconds."""
    probe = join(uri, f".write-check{TEMP_MARK}{uuid.uuid4().hex[:12]}")
    try:
        write_bytes(probe, b"")
        remove(probe)
    except Exception as e:  # noqa: BLE001 - each store raises its own types; one message for all
        raise OSError(f"cannot write to {uri}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
