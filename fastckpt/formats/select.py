"""Choosing and renaming the tensors a conversion writes: ``--only``,
``--exclude`` and ``--strip-prefix`` (a training checkpoint's model weights
exported as ``model.safetensors``)."""

from __future__ import annotations

import fnmatch
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from fastckpt.errors import InvalidArgumentError
from fastckpt.formats.source import Source
from fastckpt.structure.objectgraph import OBJECT_GRAPH_KEY
from fastckpt.structure.record import STRUCTURE_KEY
from fastckpt.structure.tree import non_tensor_values

__all__ = ["select", "matches"]

Patterns = Union[None, str, Sequence[str]]


def matches(name: str, pattern: str) -> bool:
    """Whether tensor ``name`` falls under ``pattern``: a glob (``*``,
    ``?``, ``[``) matching the name or a parent of it; a pattern ending in
    ``/`` or ``.`` matching every name that starts with it; any other
    pattern the name itself or everything under it (``model`` selects
    ``model/w`` and ``model.w``, not ``model2/w``)."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern.rstrip("/") + "/*")
    if pattern.endswith(("/", ".")):
        return name.startswith(pattern)
    return name == pattern or name.startswith(pattern + "/") or name.startswith(pattern + ".")


def _patterns(value: Patterns, what: str) -> List[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    for p in items:
        if not isinstance(p, str) or not p:
            raise InvalidArgumentError(f"{what} takes non-empty names or patterns, got {p!r}")
    return items


def select(source: Source, only: Patterns = None, exclude: Patterns = None,
           strip_prefix: Optional[str] = None) -> Source:
    """``source`` with only the tensors ``only`` selects (default: all) that
    ``exclude`` does not, each name without ``strip_prefix`` where it
    starts with it. A selection writes a flat mapping of tensors: a value
    that is not a tensor inside it (a step, a learning rate) is refused,
    naming it, as is a selection of nothing or two names that become one.
    Tied names stay tied when both are chosen."""
    wanted, dropped = _patterns(only, "only"), _patterns(exclude, "exclude")
    if strip_prefix is not None and (not isinstance(strip_prefix, str) or not strip_prefix):
        raise InvalidArgumentError(f"strip_prefix must be a non-empty str, got {strip_prefix!r}")
    if not wanted and not dropped and strip_prefix is None:
        return source
    names = [n for n in source.tensors if n not in (STRUCTURE_KEY, OBJECT_GRAPH_KEY)]

    def chosen(name: str) -> bool:
        return (not wanted or any(matches(name, p) for p in wanted)) and not any(matches(name, p) for p in dropped)

    keep = [n for n in names if chosen(n)]
    if not keep:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise InvalidArgumentError(f"the selection (only={wanted or 'all'}, exclude={dropped or 'none'}) "
                                   f"chooses no tensor of {source.path}; its tensors: {shown or 'none'}")
    values = [v for v in non_tensor_values(source.tree) if chosen(v)]
    if values:
        raise InvalidArgumentError(
            f"the selection holds {len(values)} value(s) that are not tensors ({', '.join(values[:5])}"
            f"{'...' if len(values) > 5 else ''}): a selection writes tensors only; exclude them, or convert "
            "the whole checkpoint to a TensorFlow bundle, which keeps them")
    renamed = {n: _strip(n, strip_prefix) for n in keep}
    seen: Dict[str, str] = {}
    for old, new in renamed.items():
        if new in seen:
            raise InvalidArgumentError(f"{old!r} and {seen[new]!r} both become {new!r} without the prefix "
                                       f"{strip_prefix!r}")
        seen[new] = old
    tensors = {renamed[n]: source.tensors[n] for n in keep}
    tied = {renamed[n]: renamed[first] for n, first in source.tied.items() if n in renamed and first in renamed}
    return Source(source.format, source.path, tensors, tree=None,
                  metadata=_without_names(source.metadata, source.tied), info=source.info, close=source.close,
                  tied=tied)


def _strip(name: str, prefix: Optional[str]) -> str:
    if prefix is None or not name.startswith(prefix):
        return name
    rest = name[len(prefix):]
    if not rest:
        raise InvalidArgumentError(f"tensor {name!r} would have no name left without the prefix {prefix!r}")
    return rest


def _without_names(metadata: Any, aliases: Iterable[str]) -> Any:
    """Format metadata without the tied-name aliases of the old names
    (safetensors keeps them as metadata entries; the selection's own ties
    are written again under their new names)."""
    gone = set(aliases)
    if not gone or not isinstance(metadata, dict):
        return metadata
    out = {k: v for k, v in metadata.items() if k not in gone}
    if isinstance(out.get("metadata"), dict):
        out["metadata"] = {k: v for k, v in out["metadata"].items() if k not in gone}
    return out
