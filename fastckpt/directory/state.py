"""The ``checkpoint`` state file: a text-format ``CheckpointState`` proto
naming a directory's latest checkpoint and the ones still kept."""

from __future__ import annotations

import errno
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from fastckpt.errors import CheckpointIOError, DataLossError, InvalidArgumentError
from fastckpt.storage.fsutil import write_text_atomic
from fastckpt.bundle.naming import PathLike, index_filename, is_url, local_path, storage_path
from fastckpt.storage.fileio import read_regular
from fastckpt.storage import fs
from fastckpt.storage.s3 import using_storage

__all__ = [
    "CheckpointState",
    "get_checkpoint_state",
    "read_checkpoint_state",
    "latest_checkpoint",
    "readable_prefix",
    "update_checkpoint_state",
    "state_text",
    "norm_path",
    "state_directory",
    "read_state_object",
    "parse_checkpoint_state",
    "format_checkpoint_state",
]

log = logging.getLogger("fastckpt")

STATE_FILENAME = "checkpoint"


@dataclass
class CheckpointState:
    """The contents of a ``checkpoint`` state file.

    Paths are as returned by :func:`get_checkpoint_state`: relative entries
    joined with the directory, absolute ones unchanged. Timestamps are
    seconds since the epoch, parallel to ``all_model_checkpoint_paths``
    (empty when the writer recorded none).

    ``pending`` is fastckpt's own record, kept in a comment TensorFlow
    ignores: ``(staged, final)`` prefix pairs of commits in progress. While a
    save moves its finished bundle from a staged name to its final name, the
    state file lists the staged name; if the save dies there, the next save
    in the directory (or ``fastckpt gc``) finishes the move. ``deleting``
    (also a comment) names checkpoints retention dropped, deleted right
    after the state file is written; if the save dies first, the next one
    deletes them.
    """

    model_checkpoint_path: str = ""
    all_model_checkpoint_paths: List[str] = field(default_factory=list)
    all_model_checkpoint_timestamps: List[float] = field(default_factory=list)
    last_preserved_timestamp: float = 0.0
    pending: List[Tuple[str, str]] = field(default_factory=list)
    deleting: List[str] = field(default_factory=list)


# ---- text format -------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*) |
        (?P<ident>[A-Za-z_][A-Za-z0-9_]*) |
        (?P<colon>:) |
        (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*') |
        (?P<number>[-+]?(?:inf(?:inity)?|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?)
    )""",
    re.VERBOSE | re.IGNORECASE,
)

_SIMPLE_ESCAPES = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11,
                   "\\": 92, "'": 39, '"': 34, "?": 63}


def _unescape(body: str) -> str:
    out = bytearray()
    i = 0
    raw = body.encode("utf-8", "surrogateescape")
    while i < len(raw):
        c = raw[i]
        if c != 0x5C:
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(raw):
            raise ValueError("dangling backslash")
        e = chr(raw[i + 1])
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
            i += 2
        elif e in "01234567":
            m = re.match(rb"[0-7]{1,3}", raw[i + 1:i + 4])
            assert m is not None
            out.append(int(m.group(), 8) & 0xFF)
            i += 1 + len(m.group())
        elif e in "xX":
            m = re.match(rb"[0-9a-fA-F]{1,2}", raw[i + 2:i + 4])
            if not m:
                raise ValueError("bad \\x escape")
            out.append(int(m.group(), 16))
            i += 2 + len(m.group())
        else:
            raise ValueError(f"unknown escape \\{e}")
    return out.decode("utf-8", "surrogateescape")


_TRAILING_SPACE = re.compile(r"\s*\Z")


def _tokens(text: str) -> List[Tuple[str, str]]:
    """The tokens of ``text`` in one linear pass (comments are kept: the
    pending-commit record lives in one)."""
    pos, toks = 0, []
    while pos < len(text):
        if _TRAILING_SPACE.match(text, pos):
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            line = text.count("\n", 0, pos) + 1
            raise ValueError(f"line {line}: cannot parse {text[pos:pos + 20].strip()!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        toks.append((kind, m.group(kind)))
    return toks


_PENDING = re.compile(r"#\s*fastckpt-pending:\s*(\"(?:[^\"\\\n]|\\.)*\")\s+(\"(?:[^\"\\\n]|\\.)*\")\s*\Z")
_PENDING_TAG = "# fastckpt-pending: "
_DELETING = re.compile(r"#\s*fastckpt-deleting:\s*(\"(?:[^\"\\\n]|\\.)*\")\s*\Z")
_DELETING_TAG = "# fastckpt-deleting: "


def parse_checkpoint_state(text: str) -> CheckpointState:
    """Parse the text form of a CheckpointState (raises ValueError)."""
    st = CheckpointState()
    toks = []
    for kind, value in _tokens(text):
        if kind != "comment":
            toks.append((kind, value))
            continue
        m = _PENDING.match(value)
        if m:
            st.pending.append((_unescape(m.group(1)[1:-1]), _unescape(m.group(2)[1:-1])))
        m = _DELETING.match(value)
        if m:
            st.deleting.append(_unescape(m.group(1)[1:-1]))
    i = 0
    while i < len(toks):
        kind, name = toks[i]
        if kind != "ident" or i + 2 > len(toks) or toks[i + 1][0] != "colon":
            raise ValueError(f"expected 'field: value' at {name!r}")
        i += 2
        if i >= len(toks):
            raise ValueError(f"field {name} has no value")
        vkind, value = toks[i]
        i += 1
        if name in ("model_checkpoint_path", "all_model_checkpoint_paths"):
            if vkind != "string":
                raise ValueError(f"field {name} takes a string")
            s = _unescape(value[1:-1])
            while i < len(toks) and toks[i][0] == "string":  # adjacent literals concatenate
                s += _unescape(toks[i][1][1:-1])
                i += 1
            if name == "model_checkpoint_path":
                st.model_checkpoint_path = s
            else:
                st.all_model_checkpoint_paths.append(s)
        elif name in ("all_model_checkpoint_timestamps", "last_preserved_timestamp"):
            if vkind not in ("number", "ident"):
                raise ValueError(f"field {name} takes a number")
            num = float(value.rstrip("fF"))
            if name == "last_preserved_timestamp":
                st.last_preserved_timestamp = num
            else:
                st.all_model_checkpoint_timestamps.append(num)
        else:
            raise ValueError(f'Message type "tensorflow.CheckpointState" has no field named "{name}"')
    return st


def _quote(s: str) -> str:
    """A text-format string literal; non-ASCII text stays raw UTF-8, as
    protobuf 7 writes it; undecodable bytes become octal escapes."""
    out = []
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\{o:03o}")
        elif 0xDC80 <= o <= 0xDCFF:  # a surrogate-escaped raw byte
            out.append(f"\\{o - 0xDC00:03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _number(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if math.isnan(x):
        return "nan"
    return repr(float(x))


def format_checkpoint_state(st: CheckpointState) -> str:
    """The text form TensorFlow writes (``text_format.MessageToString``)."""
    lines = []
    if st.model_checkpoint_path:
        lines.append(f"model_checkpoint_path: {_quote(st.model_checkpoint_path)}")
    lines += [f"all_model_checkpoint_paths: {_quote(p)}" for p in st.all_model_checkpoint_paths]
    lines += [f"all_model_checkpoint_timestamps: {_number(t)}" for t in st.all_model_checkpoint_timestamps]
    if st.last_preserved_timestamp:
        lines.append(f"last_preserved_timestamp: {_number(st.last_preserved_timestamp)}")
    lines += [f"{_PENDING_TAG}{_quote(a)} {_quote(b)}" for a, b in st.pending]
    lines += [f"{_DELETING_TAG}{_quote(p)}" for p in st.deleting]
    return "".join(line + "\n" for line in lines)


# ---- reading ---------------------------------------------------------------------

def state_path(checkpoint_dir: str, latest_filename: Optional[str]) -> str:
    """The state file's path; :class:`InvalidArgumentError` unless
    ``latest_filename`` is a plain file name."""
    name = STATE_FILENAME if latest_filename is None else latest_filename
    if not isinstance(name, str) or not name or os.sep in name or (os.altsep and os.altsep in name):
        raise InvalidArgumentError(f"latest_filename must be a plain file name, got {latest_filename!r}")
    return os.path.join(checkpoint_dir, name)


def read_checkpoint_state(
    checkpoint_dir: PathLike, latest_filename: Optional[str] = None
) -> Optional[CheckpointState]:
    """The state file as it is written, or ``None`` without one: during a
    commit it may list a staged bundle (``.fcsave-…``) under its pending
    record. What the commit itself reads; readers want
    :func:`get_checkpoint_state`.

    Relative paths are joined with ``checkpoint_dir``; absolute ones are kept.
    A state file that cannot be read or parsed, or that names no checkpoint,
    raises :class:`DataLossError` (a ``ValueError``) naming the file.
    """
    d = state_directory(checkpoint_dir)
    path = state_path(d, latest_filename)
    if is_url(path):
        return read_state_object(d, latest_filename)[0]
    try:
        raw = read_regular(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise DataLossError(f"checkpoint state file {path} is a directory") from None
        if e.errno in (errno.EINVAL, errno.ELOOP, errno.ENXIO):
            raise DataLossError(f"checkpoint state file {path} is not a regular file") from None
        raise CheckpointIOError(e.errno or 0, f"cannot read checkpoint state file {path}: {e.strerror}", path) from e
    return _parsed(raw, d, path)


def state_directory(checkpoint_dir: PathLike) -> str:
    """A checkpoint directory as a checked local path or ``s3://`` URL
    (without a trailing ``/``)."""
    d = storage_path(checkpoint_dir, "checkpoint_dir")
    return d.rstrip("/") if is_url(d) else d


def read_state_object(d: str, latest_filename: Optional[str] = None) -> Tuple[Optional[CheckpointState], Optional[str]]:
    """The state object of the object-store directory ``d`` as
    :func:`read_checkpoint_state` reads a state file, with the ETag of the
    version read (what a conditional write replaces); ``(None, None)``
    without one."""
    path = state_path(d, latest_filename)
    try:
        raw, etag = fs.object_store(path).read_with_etag(path)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        raise CheckpointIOError(e.errno or errno.EIO, f"cannot read checkpoint state {path}: {e}", path) from e
    return _parsed(raw, d, path), etag


def _parsed(raw: bytes, d: str, path: str) -> CheckpointState:
    try:
        st = parse_checkpoint_state(raw.decode("utf-8", "surrogateescape"))
    except ValueError as e:
        raise DataLossError(f"checkpoint state file {path} is corrupt: {e}") from None
    if not st.model_checkpoint_path:
        raise DataLossError(f"Invalid checkpoint state loaded from {d}: {path} names no model_checkpoint_path")
    join = lambda p: p if os.path.isabs(p) or is_url(p) else os.path.join(d, p)  # noqa: E731
    st.model_checkpoint_path = join(st.model_checkpoint_path)
    st.all_model_checkpoint_paths = [join(p) for p in st.all_model_checkpoint_paths]
    st.pending = [(join(a), join(b)) for a, b in st.pending]
    st.deleting = [join(p) for p in st.deleting]
    return st


def norm_path(path: str) -> str:
    """A checkpoint path made comparable: absolute and normalised (an
    ``s3://`` URL as it is: its keys are checked to hold no dot segments)."""
    if is_url(path):
        return path
    return os.path.normpath(os.path.abspath(path))


def _final_names(st: CheckpointState) -> CheckpointState:
    """``st`` with every staged bundle a pending commit lists replaced by the
    name it is being committed as (each name once, the later entry kept,
    timestamps kept parallel)."""
    final = {norm_path(a): b for a, b in st.pending}

    def rename(p: str) -> str:
        return final.get(norm_path(p), p)
    paths = [rename(p) for p in st.all_model_checkpoint_paths]
    stamps = list(st.all_model_checkpoint_timestamps)
    keep = [i for i, p in enumerate(paths) if all(norm_path(q) != norm_path(p) for q in paths[i + 1:])]
    return CheckpointState(rename(st.model_checkpoint_path), [paths[i] for i in keep],
                           [stamps[i] for i in keep] if len(stamps) == len(paths) else stamps,
                           st.last_preserved_timestamp, list(st.pending), list(st.deleting))


def get_checkpoint_state(
    checkpoint_dir: PathLike, latest_filename: Optional[str] = None, *,
    storage_options: Optional[Mapping[str, Any]] = None
) -> Optional[CheckpointState]:
    """The directory's checkpoint state, or ``None`` if it has no state file.

    Relative paths are joined with ``checkpoint_dir``; absolute ones are kept.
    A checkpoint being committed is named by its final name, never by the
    private name (``.fcsave-…``) the state file lists for the few system
    calls of a commit that replaces it (:func:`readable_prefix` finds its
    files meanwhile). A state file that cannot be read or parsed, or that
    names no checkpoint, raises :class:`DataLossError` (a ``ValueError``)
    naming the file, rather than being silently ignored.
    """
    with using_storage(storage_options):
        st = read_checkpoint_state(checkpoint_dir, latest_filename)
        return None if st is None else _final_names(st)


def checkpoint_exists(prefix: str) -> bool:
    """True if ``prefix.index`` exists (its literal path: no globbing)."""
    return fs.is_file(index_filename(prefix))


def _staged_for(st: Optional[CheckpointState], prefix: str) -> Optional[str]:
    """The complete staged bundle that ``st`` lists in place of ``prefix``
    while a commit replaces it (a pending new name is not listed: it is
    no checkpoint until its commit ends)."""
    if st is None:
        return None
    norm = norm_path
    listed = {norm(p) for p in st.all_model_checkpoint_paths + [st.model_checkpoint_path]}
    for staged, final in st.pending:
        if norm(final) == norm(prefix) and norm(staged) in listed and checkpoint_exists(staged):
            return staged
    return None


def readable_prefix(prefix: str, latest_filename: Optional[str] = None) -> Optional[str]:
    """Where the checkpoint ``prefix`` is read right now: while a commit
    replaces it, the complete staged bundle its directory's state file
    lists in its place (the contents recovery would keep if the save died
    there); otherwise ``prefix`` itself; None when neither exists."""
    directory = os.path.dirname(prefix) or "."
    st = _state_or_none(directory, latest_filename)
    for _ in range(100):  # a commit changes the state file before it hides anything: read again then
        staged = _staged_for(st, prefix)
        if staged is not None:
            return staged
        if checkpoint_exists(prefix):
            return prefix
        again = _state_or_none(directory, latest_filename)
        if again == st:
            return None
        st = again
    return None


def _state_or_none(directory: str, latest_filename: Optional[str]) -> Optional[CheckpointState]:
    try:
        return read_checkpoint_state(directory, latest_filename)
    except (DataLossError, CheckpointIOError, InvalidArgumentError):
        return None


def latest_checkpoint(checkpoint_dir: PathLike, latest_filename: Optional[str] = None, *,
                      storage_options: Optional[Mapping[str, Any]] = None) -> Optional[str]:
    """The prefix of the directory's latest checkpoint, or ``None``.

    ``None`` when there is no state file or the checkpoint it names has no
    index on disk (checked by literal path, so ``[`` in directory names is
    harmless). Never a staged name, and never ``None`` while a committed
    checkpoint is listed: a state file that changes between reading it and
    checking its checkpoint (a commit finished) is read again.
    """
    with using_storage(storage_options):
        st = read_checkpoint_state(checkpoint_dir, latest_filename)
        for _ in range(100):
            if st is None:
                return None
            final = _final_names(st).model_checkpoint_path
            if checkpoint_exists(final) or checkpoint_exists(st.model_checkpoint_path):
                return final
            again = read_checkpoint_state(checkpoint_dir, latest_filename)
            if again == st:
                break
            st = again
        if st is not None:
            log.error("Couldn't match files for checkpoint %s", st.model_checkpoint_path)
        return None


# ---- writing ----------------------------------------------------------------------

def _relative_to(path: str, directory: str) -> str:
    """``path`` relative to ``directory`` when it lies inside it, else absolute."""
    if is_url(directory) or is_url(path):
        head = directory.rstrip("/") + "/"
        return path[len(head):] if path.startswith(head) and len(path) > len(head) else path
    ap, ad = os.path.abspath(path), os.path.abspath(directory)
    if os.path.dirname(ap) == ad or ap.startswith(ad.rstrip(os.sep) + os.sep):
        return os.path.relpath(ap, ad)
    return ap


def update_checkpoint_state(
    save_dir: PathLike,
    model_checkpoint_path: str,
    all_model_checkpoint_paths: Optional[Sequence[str]] = None,
    *,
    all_model_checkpoint_timestamps: Optional[Sequence[float]] = None,
    last_preserved_timestamp: Optional[float] = None,
    latest_filename: Optional[str] = None,
    durable: bool = True,
    pending: Sequence[Tuple[str, str]] = (),
    deleting: Sequence[str] = (),
    storage_options: Optional[Mapping[str, Any]] = None,
) -> str:
    """Atomically rewrite the directory's state file; returns its path.

    Paths inside ``save_dir`` are stored relative to it (so the directory can
    be moved), others absolute. The model path is appended to the list if it
    is not already last. The text goes to a temporary file that is fsync'd
    (when ``durable``) and renamed over the state file, so readers see the
    old or the new state, never a mix.
    """
    with using_storage(storage_options):
        d = storage_path(save_dir, "save_dir")
        path = state_path(d, latest_filename)
        text = state_text(d, model_checkpoint_path, all_model_checkpoint_paths,
                          all_model_checkpoint_timestamps=all_model_checkpoint_timestamps,
                          last_preserved_timestamp=last_preserved_timestamp, latest_filename=latest_filename,
                          pending=pending, deleting=deleting)
        if is_url(path):
            try:
                fs.object_store(path).put(path, text.encode("utf-8", "surrogateescape"))
            except OSError as e:
                raise CheckpointIOError(e.errno or errno.EIO, f"cannot write checkpoint state {path}: {e}", path) from e
        else:
            write_text_atomic(path, text, durable)
        return path


def state_text(
    d: str,
    model_checkpoint_path: str,
    all_model_checkpoint_paths: Optional[Sequence[str]] = None,
    *,
    all_model_checkpoint_timestamps: Optional[Sequence[float]] = None,
    last_preserved_timestamp: Optional[float] = None,
    latest_filename: Optional[str] = None,
    pending: Sequence[Tuple[str, str]] = (),
    deleting: Sequence[str] = (),
) -> str:
    """The text of the state file of directory ``d`` (checked arguments as
    :func:`update_checkpoint_state` takes them)."""
    path = state_path(d, latest_filename)
    if not model_checkpoint_path:
        raise InvalidArgumentError("model_checkpoint_path must not be empty")
    if norm_path(model_checkpoint_path) == norm_path(path):
        raise InvalidArgumentError(
            f"Save path {model_checkpoint_path!r} conflicts with path used for checkpoint state")
    paths = list(all_model_checkpoint_paths or [])
    stamps = list(all_model_checkpoint_timestamps or [])
    if stamps and len(stamps) != len(paths):
        raise InvalidArgumentError(
            f"{len(stamps)} timestamps for {len(paths)} checkpoint paths")
    if not paths or paths[-1] != model_checkpoint_path:
        paths.append(model_checkpoint_path)
        if stamps:
            raise InvalidArgumentError("with timestamps, the model path must be the last listed path")
    st = CheckpointState(
        _relative_to(model_checkpoint_path, d),
        [_relative_to(p, d) for p in paths],
        [float(t) for t in stamps],
        float(last_preserved_timestamp or 0.0),
        [(_relative_to(a, d), _relative_to(b, d)) for a, b in pending],
        [_relative_to(p, d) for p in deleting],
    )
    return format_checkpoint_state(st)
