"""File edges shared by the whole package: atomic writes, output folders and YAML configs.

Atomic writes go to a temporary file next to the target and are renamed onto it, so a reader never
sees a half-written model, checkpoint or data file, and a failed write (a full disk, Ctrl-C) leaves
the previous file as it was. Failures to write raise ``OSError`` (of the original subclass and errno)
whose message names the target path, not the temporary file, and says whether the target still
holds its previous content.

:func:`load_yaml` is the one reader of YAML configs (training and active learning): it refuses a key
that appears twice in one mapping, which plain YAML loaders resolve silently by keeping the last.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

import torch
import yaml

PathLike = Union[str, os.PathLike]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
#: Free bytes below which a failed torch.save is reported as a full disk.
_NEARLY_FULL_BYTES = 1 << 20


def os_error(exc: OSError, message: str) -> OSError:
    """An exception of ``exc``'s class and errno carrying ``message`` (which should name the path)."""
    try:
        new = type(exc)(message)
    except Exception:  # an OSError subclass with another constructor
        new = OSError(message)
    new.errno = exc.errno  # str(new) stays ``message``: strerror is left unset
    return new


def _reason(exc: OSError) -> str:
    """The system's text for ``exc`` (e.g. "No space left on device"), without the file name."""
    if exc.strerror:
        return exc.strerror
    return os.strerror(exc.errno) if exc.errno else str(exc)


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it onto ``path``.

    A reader never sees a half-written file; if ``write`` raises (or Ctrl-C arrives), the temporary
    file is removed and ``path`` keeps its previous content. An ``OSError`` (no permission, a full
    disk, a parent that is a file) is raised again with a message that names ``path`` and says that
    it was left unchanged.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    existed = os.path.isfile(path)
    kept = "it keeps its previous content" if existed else "nothing was written"
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    except OSError as exc:
        raise os_error(exc, f"cannot write {path}: {_reason(exc)}") from exc
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise os_error(exc, f"cannot write {path}: {_reason(exc)}; {kept}") from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(tmp: str) -> None:
    try:
        if os.path.exists(tmp):
            os.remove(tmp)
    except OSError:
        pass  # the original error matters more than a leftover temporary file


def _write_bytes(tmp: str, data: bytes) -> None:
    """Write ``data`` to ``tmp`` and flush it to the disk (so that the rename publishes all of it)."""
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_bytes(data: bytes, path: PathLike) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_write`."""
    atomic_write(path, lambda tmp: _write_bytes(tmp, data))


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`.

    torch's file writer reports a failed write as ``RuntimeError`` ("[enforce fail at
    inline_container.cc] unexpected pos ..."); it is raised as ``OSError`` (ENOSPC when the disk is
    nearly full, else EIO) so that a full disk reads as one, naming ``path``.
    """

    def write(tmp: str) -> None:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            text = str(exc)
            if not any(s in text for s in ("inline_container", "PytorchStreamWriter", "file write failed")):
                raise
            if shutil.disk_usage(os.path.dirname(tmp)).free < _NEARLY_FULL_BYTES:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from exc
            raise OSError(errno.EIO, f"torch.save failed ({text.strip()})") from exc

    atomic_write(path, write)


def atomic_write_text(text: str, path: PathLike) -> None:
    """Write a text file (UTF-8) through :func:`atomic_write`."""
    atomic_write_bytes(text.encode("utf-8"), path)


def prepare_output_dir(path: PathLike, what: str = "output folder") -> Path:
    """Create the folder ``path`` if needed and check that files can be created in it; returns it.

    Called before any long computation, so that a run does not fail at its first write. Raises
    ``NotADirectoryError`` when ``path`` (or a parent) is a file, and ``PermissionError`` (or another
    ``OSError``) when the folder cannot be created or written; the messages name the path and ``what``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what} {str(path)!r} is a file, not a folder; choose a folder")
    blocking = next((p for p in path.absolute().parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise NotADirectoryError(f"cannot create the {what} {str(path)!r}: {str(blocking)!r} is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, f"cannot create the {what} {str(path)!r}: {_reason(exc)}") from exc
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
    except OSError as exc:
        raise os_error(exc, f"cannot write in the {what} {str(path)!r}: {_reason(exc)}") from exc
    os.close(fd)
    os.remove(probe)
    return path


# -------------------------------------------------------------------------------------------- YAML

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_unique_keys(node: yaml.Node, path: str, where: str, visited: set | None = None) -> None:
    """Raise ValueError for a key that appears twice in one mapping of the node tree.

    ``visited`` holds the ids of the nodes already checked: an alias (``*name``) shares the node of
    its anchor, and a recursive alias would otherwise be followed forever.
    """
    visited = set() if visited is None else visited
    if id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # "<<: *anchor" merges are allowed to be overridden
                _check_unique_keys(value_node, path, where, visited)
                continue
            key = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            name = f"{path}.{key_node.value}" if path else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key is not None and key in seen:
                raise ValueError(
                    f"{where}: duplicate key {name!r} at lines {seen[key]} and {line}; each key may appear "
                    f"only once (YAML would silently keep the last value)"
                )
            if key is not None:
                seen[key] = line
            _check_unique_keys(value_node, name, where, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, f"{path}[{i}]", where, visited)


def check_input_file(path: PathLike, what: str, expected: str = "a file") -> Path:
    """``path`` as a Path if it is a readable file, else an ``OSError`` naming ``what`` and the path:
    ``FileNotFoundError`` (missing), ``IsADirectoryError`` (a folder where ``expected`` belongs) or the
    error of ``open`` (e.g. ``PermissionError``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{what} file {str(path)!r} is a folder, expected {expected}")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise os_error(exc, f"cannot read {what} file {str(path)!r}: {_reason(exc)}") from exc
    return path


def load_yaml(path: PathLike, what: str = "config") -> Any:
    """Read a YAML file with ``yaml.SafeLoader`` (no code runs), refusing duplicate keys.

    Returns the document (None for an empty file). Raises ``FileNotFoundError`` /
    ``IsADirectoryError`` / ``PermissionError`` naming the path, and ValueError naming the file for
    text that is not UTF-8, not valid YAML, or a mapping with a key given twice (with both line
    numbers); ``what`` (e.g. "training config") goes into the messages.
    """
    path = check_input_file(path, what, "a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: {what} is not a UTF-8 text file (byte {exc.start} cannot be decoded)") from None
    except OSError as exc:
        raise os_error(exc, f"cannot read the {what} file {str(path)!r}: {_reason(exc)}") from exc
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_unique_keys(node, "", str(path))
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: {what} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()
