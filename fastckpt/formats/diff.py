"""``fastckpt diff A B``: how two checkpoints (of any supported formats)
differ -- tensors only in one, dtype or shape changes, and per tensor
whether it is bit-identical, or its largest absolute and relative
difference; and the values that are not tensors (a step, a learning
rate, kept in the structure record) that differ or are only in one. Tensors are compared in pieces of 1 Mi elements: memory is
the two tensors being compared (views of mapped files where the formats
allow) plus about 50 MiB of temporaries."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from fastckpt.errors import InvalidArgumentError
from fastckpt.bundle.lazy import LazyTensor
from fastckpt.formats.registry import open_source
from fastckpt.bundle.lazy import guarded_copy
from fastckpt.bundle.naming import PathLike
from fastckpt.storage.s3 import using_storage
from fastckpt.structure.tree import node_value

__all__ = ["diff", "Diff", "TensorDiff"]

PIECE_ELEMENTS = 1 << 20  # float64 temporaries of 8 MiB each


@dataclass
class TensorDiff:
    """One tensor present in both: ``status`` is ``identical`` (bit for
    bit), ``close`` (within tolerance), ``different``, ``dtype`` or
    ``shape`` (changed; values compared as float64 when only the dtype
    changed and both are numbers). ``max_abs``/``max_rel``: the largest
    ``|a - b|`` and ``|a - b| / |b|`` (NaN in the same place counts as
    equal, NaN against a number as an infinite difference)."""

    status: str
    dtype_a: str
    dtype_b: str
    shape_a: List[int]
    shape_b: List[int]
    max_abs: Optional[float] = None
    max_rel: Optional[float] = None
    mismatched: int = 0


@dataclass
class Diff:
    """What ``diff`` found; ``equal`` is what the exit status reports."""

    a: str
    b: str
    only_in_a: List[str] = field(default_factory=list)
    only_in_b: List[str] = field(default_factory=list)
    tensors: Dict[str, TensorDiff] = field(default_factory=dict)
    atol: float = 0.0
    rtol: float = 0.0
    values: Dict[str, Tuple[Any, Any]] = field(default_factory=dict)  # path -> (A's, B's) where they differ
    values_only_in_a: List[str] = field(default_factory=list)
    values_only_in_b: List[str] = field(default_factory=list)
    ignore_dtype: bool = False

    @property
    def equal(self) -> bool:
        """No tensor or value only in one, every common tensor identical or
        close, every common value the same."""
        return not (self.only_in_a or self.only_in_b or self.values or self.values_only_in_a
                    or self.values_only_in_b) and all(t.status in ("identical", "close") for t in self.tensors.values())

    def to_json(self) -> Dict[str, Any]:
        """A JSON-able dict (non-finite numbers as strings)."""
        return {"a": self.a, "b": self.b, "equal": self.equal, "atol": self.atol, "rtol": self.rtol,
                "ignore_dtype": self.ignore_dtype, "only_in_a": self.only_in_a, "only_in_b": self.only_in_b,
                "tensors": {n: {k: _json_number(v) for k, v in asdict(t).items()} for n, t in self.tensors.items()},
                "values": {n: [repr(x), repr(y)] for n, (x, y) in self.values.items()},
                "values_only_in_a": self.values_only_in_a, "values_only_in_b": self.values_only_in_b}

    def lines(self, *, all_tensors: bool = False, summary: bool = False) -> Iterator[str]:
        """The report for a terminal (``summary``: its last line only)."""
        counts: Dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.status] = counts.get(t.status, 0) + 1
        if not summary:
            for n in self.only_in_a:
                yield f"only in A: {n}"
            for n in self.only_in_b:
                yield f"only in B: {n}"
            for name, t in self.tensors.items():
                if t.status == "identical" and not all_tensors:
                    continue
                yield f"{t.status:>9}  {name}  " + _detail(t)
            for n in self.values_only_in_a:
                yield f"value only in A: {n}"
            for n in self.values_only_in_b:
                yield f"value only in B: {n}"
            for n, (x, y) in self.values.items():
                yield f"    value  {n}  {x!r:.60} -> {y!r:.60}"
        tally = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        yield (f"{'equal' if self.equal else 'DIFFERENT'}: {len(self.tensors)} common tensor(s) ({tally or 'none'})"
               f"; {len(self.only_in_a)} only in A, {len(self.only_in_b)} only in B; "
               f"{len(self.values)} value(s) differ, {len(self.values_only_in_a) + len(self.values_only_in_b)} "
               "only in one")


def _json_number(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _detail(t: TensorDiff) -> str:
    parts = []
    if t.status in ("dtype", "shape"):
        parts.append(f"{t.dtype_a}{t.shape_a} -> {t.dtype_b}{t.shape_b}")
    if t.max_abs is not None and t.status != "identical":
        parts.append(f"max abs {t.max_abs:.6g}, max rel {t.max_rel:.6g}, {t.mismatched} element(s) differ")
    return "; ".join(parts)


def diff(a: PathLike, b: PathLike, *, atol: float = 0.0, rtol: float = 0.0, a_format: Optional[str] = None,
         b_format: Optional[str] = None, storage_options: Optional[Mapping[str, Any]] = None,
         ignore_dtype: bool = False) -> Diff:
    """Compare checkpoints ``a`` and ``b`` (any supported formats; see
    :func:`fastckpt.convert`). A tensor is ``close`` when every element
    satisfies ``|a - b| <= atol + rtol * |b|``, as ``numpy.isclose``; with
    ``ignore_dtype`` a tensor cast to another dtype is compared by value
    too (``close`` when within tolerance), else it is ``dtype``. Values
    that are not tensors (ints, floats, strings, None of a training state's
    structure) are compared exactly."""
    with using_storage(storage_options):
        if not all(type(x) in (int, float) and x >= 0 for x in (atol, rtol)):
            raise InvalidArgumentError(f"atol and rtol must be non-negative numbers, got {atol!r} and {rtol!r}")
        if type(ignore_dtype) is not bool:
            raise InvalidArgumentError(f"ignore_dtype must be a bool, got {ignore_dtype!r}")
        with open_source(a, a_format) as sa, open_source(b, b_format) as sb:
            report = Diff(sa.path, sb.path, atol=float(atol), rtol=float(rtol), ignore_dtype=ignore_dtype)
            report.only_in_a = [n for n in sa.tensors if n not in sb.tensors]
            report.only_in_b = [n for n in sb.tensors if n not in sa.tensors]
            for name in sorted(set(sa.tensors) & set(sb.tensors)):
                report.tensors[name] = compare(sa.tensors[name], sb.tensors[name], atol, rtol, ignore_dtype)
            va, vb = tree_values(sa.tree), tree_values(sb.tree)
            report.values_only_in_a = [n for n in va if n not in vb]
            report.values_only_in_b = [n for n in vb if n not in va]
            report.values = {n: (va[n], vb[n]) for n in va if n in vb and not _same_value(va[n], vb[n])}
        return report


def tree_values(tree: Any, path: str = "") -> Dict[str, Any]:
    """The values of a structure tree that are not tensors, by path, as the
    Python values they are (``{"optim/lr": 0.001, "step": 7}``)."""
    if not isinstance(tree, dict):
        return {}
    for kind in ("dict", "list", "tuple"):
        if kind in tree:
            pairs = tree[kind] if kind == "dict" else list(enumerate(tree[kind]))
            out: Dict[str, Any] = {}
            for k, v in pairs:
                out.update(tree_values(v, f"{path}/{k}" if path else str(k)))
            return out
    if "leaf" in tree:
        return {}
    return {path or "<root>": node_value(tree)}


def _same_value(x: Any, y: Any) -> bool:
    """Equal, of the same type, NaN equal to NaN."""
    if type(x) is not type(y):
        return False
    if isinstance(x, float) and math.isnan(x) and math.isnan(y):
        return True
    return bool(x == y)


def compare(ta: LazyTensor, tb: LazyTensor, atol: float, rtol: float, ignore_dtype: bool = False) -> TensorDiff:
    """How tensor ``tb`` differs from ``ta`` (``ignore_dtype``: a changed
    dtype is ``close`` or ``different`` by value)."""
    out = TensorDiff("identical", str(ta.dtype), str(tb.dtype), list(ta.shape), list(tb.shape))
    if tuple(ta.shape) != tuple(tb.shape):
        out.status = "shape"
        return out
    x, y = ta.array(), tb.array()
    if x.dtype.kind in "OSU" or y.dtype.kind in "OSU":
        same = x.dtype.kind in "OSU" and y.dtype.kind in "OSU" and np.array_equal(x, y)
        out.status = "identical" if same else ("dtype" if x.dtype != y.dtype else "different")
        return out
    same_dtype = x.dtype == y.dtype
    identical = same_dtype
    worst_abs = worst_rel = 0.0
    mismatched = 0
    for px, py in _pieces(x, y):
        px = guarded_copy(px, ta.what) if ta.mapped else px  # a source cut meanwhile: DataLossError
        py = guarded_copy(py, tb.what) if tb.mapped else py
        if identical and px.tobytes() == py.tobytes():
            continue
        identical = False
        fx, fy = _as_float(px), _as_float(py)
        with np.errstate(invalid="ignore", divide="ignore"):
            both_nan = np.isnan(fx) & np.isnan(fy)
            same = (fx == fy) | both_nan
            d = np.where(same, 0.0, np.abs(fx - fy))
            d = np.where(np.isnan(d), np.inf, d)
            r = np.where(same, 0.0, d / np.abs(fy))
            r = np.where(np.isnan(r), np.inf, r)
            bad = ~same & ~(d <= atol + rtol * np.abs(fy))
        mismatched += int(bad.sum())
        if d.size:
            worst_abs, worst_rel = max(worst_abs, float(d.max())), max(worst_rel, float(r.max()))
    out.max_abs, out.max_rel, out.mismatched = worst_abs, worst_rel, mismatched
    if not same_dtype and ignore_dtype:
        out.status = "close" if mismatched == 0 else "different"
    elif not same_dtype:
        out.status = "dtype"
    elif not identical:
        out.status = "close" if mismatched == 0 else "different"
    return out


def _pieces(x: np.ndarray, y: np.ndarray) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Matching runs of :data:`PIECE_ELEMENTS` elements in C order (views
    of contiguous tensors; others are flattened once)."""
    fx, fy = x.reshape(-1), y.reshape(-1)
    for at in range(0, max(fx.size, 1), PIECE_ELEMENTS):
        yield fx[at:at + PIECE_ELEMENTS], fy[at:at + PIECE_ELEMENTS]


def _as_float(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "c":
        return a.astype(np.complex128)
    if a.dtype.kind == "b":
        return a.astype(np.int8).astype(np.float64)
    return a.astype(np.float64)
