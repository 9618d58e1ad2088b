"""TensorFlow 2 object graphs: the ``TrackableObjectGraph`` that
``tf.train.Checkpoint`` stores in the string tensor
``_CHECKPOINTABLE_OBJECT_GRAPH`` (spec §12), read and written here without
TensorFlow.

Reading turns the graph into the object tree it describes: every object
reachable from the root, by its children's local names, down to variables
(their ``VARIABLE_VALUE`` tensor). Objects reachable by several paths
(Keras 3 tracks a layer's kernel under the model and under the optimizer's
``_trainable_variables``) appear at each, as the same array. Optimizer
slots recorded as ``slot_variables`` (TensorFlow 1-style optimizers) sit in
their optimizer's node under ``".OPTIMIZER_SLOT"`` → variable path → slot
name. Objects without any value are left out.

Writing builds a graph for a tree of dicts and lists of arrays (what a tree
of ``tf.Module`` attributes and ``tf.Variable``s looks like), or reuses the
graph and keys of an existing TensorFlow 2 checkpoint (``template``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from fastckpt.errors import DataLossError, InvalidArgumentError
from fastckpt.bundle.frameworks import is_array, to_numpy
from fastckpt.bundle.reader import CheckpointReader

__all__ = ["OBJECT_GRAPH_KEY", "parse_object_graph", "object_paths", "restore_object_tree", "object_graph_tensors", "encode_object_graph", "object_tree", "TrackableObject",
           "graph_for_state", "escape_local_name", "template_tensors", "variable_names", "name_tree"]

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
SAVE_COUNTER = "save_counter"
VALUE = "VARIABLE_VALUE"
SLOTS = ".OPTIMIZER_SLOT"


@dataclass
class TrackableObject:
    """One node: children ``(node_id, local_name)``, attributes
    ``(name, full_name, checkpoint_key)``, slot variables
    ``(original_variable_node_id, slot_name, slot_variable_node_id)``; the
    other fields' bytes are kept as they were."""

    children: List[Tuple[int, str]] = field(default_factory=list)
    attributes: List[Tuple[str, str, str]] = field(default_factory=list)
    slot_variables: List[Tuple[int, str, int]] = field(default_factory=list)
    has_checkpoint_values: Optional[bool] = None
    other: bytes = b""


# ---- protobuf wire format (the few shapes these messages use) ----------------------------------

def _varint(buf: bytes, at: int, end: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if at >= end or shift > 63:
            raise DataLossError("the object graph is damaged: a truncated or overlong varint")
        b = buf[at]
        at += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, at


def _fields(buf: bytes, at: int = 0, end: Optional[int] = None) -> Iterator[Tuple[int, int, Any, int, int]]:
    """``(field number, wire type, value, start, stop)`` of each field of one
    message, one at a time (a graph of millions of nodes is never listed
    twice)."""
    end = len(buf) if end is None else end
    value: Any
    while at < end:
        start = at
        tag, at = _varint(buf, at, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, at = _varint(buf, at, end)
        elif wire == 2:
            n, at = _varint(buf, at, end)
            if n > end - at:
                raise DataLossError("the object graph is damaged: a field runs past its message")
            value, at = (at, at + n), at + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if n > end - at:
                raise DataLossError("the object graph is damaged: a truncated fixed-size field")
            value, at = buf[at:at + n], at + n
        else:
            raise DataLossError(f"the object graph is damaged: wire type {wire}")
        if number == 0:
            raise DataLossError("the object graph is damaged: field number 0")
        yield number, wire, value, start, at


def _text(buf: bytes, span: Tuple[int, int]) -> str:
    try:
        return buf[span[0]:span[1]].decode("utf-8")
    except UnicodeDecodeError:
        raise DataLossError("the object graph is damaged: a name is not UTF-8") from None


def _sub(buf: bytes, span: Any, wire: int, what: str) -> Iterator[Tuple[int, int, Any, int, int]]:
    if wire != 2:
        raise DataLossError(f"the object graph is damaged: {what} is not a message")
    return _fields(buf, span[0], span[1])


def parse_object_graph(raw: Any) -> List[TrackableObject]:
    """The nodes of a serialized ``TrackableObjectGraph`` (node 0 is the
    root); every node id is checked to name a node."""
    buf = bytes(raw)
    nodes = []
    for number, wire, value, _, _ in _fields(buf):
        if number == 1:
            empty = wire == 2 and value[1] == value[0]
            nodes.append(_EMPTY if empty else _parse_node(buf, _sub(buf, value, wire, "a node")))
    for i, node in enumerate(nodes):
        for ref in [c for c, _ in node.children] + [x for o, _, s in node.slot_variables for x in (o, s)]:
            if not 0 <= ref < len(nodes):
                raise DataLossError(f"the object graph is damaged: node {i} refers to node {ref} of {len(nodes)}")
    if not nodes:
        raise DataLossError("the object graph is damaged: it has no root")
    return nodes


_EMPTY = TrackableObject()  # every empty node of a parsed graph (it is never changed): 8 bytes each


def _parse_node(buf: bytes, fields: Iterator[Tuple[int, int, Any, int, int]]) -> TrackableObject:
    node = TrackableObject()
    other = bytearray()
    for number, wire, value, start, stop in fields:
        if number == 1:
            sub = {n: (w, v) for n, w, v, _, _ in _sub(buf, value, wire, "a child")}
            node.children.append((_int(sub.get(1)), _str(buf, sub.get(2))))
        elif number == 2:
            sub = {n: (w, v) for n, w, v, _, _ in _sub(buf, value, wire, "an attribute")}
            node.attributes.append((_str(buf, sub.get(1)), _str(buf, sub.get(2)), _str(buf, sub.get(3))))
        elif number == 3:
            sub = {n: (w, v) for n, w, v, _, _ in _sub(buf, value, wire, "a slot variable")}
            node.slot_variables.append((_int(sub.get(1)), _str(buf, sub.get(2)), _int(sub.get(3))))
        elif number == 5:
            sub = {n: (w, v) for n, w, v, _, _ in _sub(buf, value, wire, "has_checkpoint_values")}
            node.has_checkpoint_values = bool(_int(sub.get(1)))
        else:
            other += buf[start:stop]
    node.other = bytes(other)
    return node


def _int(field: Optional[Tuple[int, Any]]) -> int:
    if field is None:
        return 0
    wire, value = field
    if wire != 0:
        raise DataLossError("the object graph is damaged: an id is not a varint")
    return value - (1 << 64) if value >= 1 << 63 else value


def _str(buf: bytes, field: Optional[Tuple[int, Any]]) -> str:
    if field is None:
        return ""
    wire, value = field
    if wire != 2:
        raise DataLossError("the object graph is damaged: a name is not a string")
    return _text(buf, value)


def _put_varint(out: bytearray, n: int) -> None:
    n &= (1 << 64) - 1
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _put_bytes(out: bytearray, number: int, data: bytes) -> None:
    _put_varint(out, number << 3 | 2)
    _put_varint(out, len(data))
    out += data


def _put_int(out: bytearray, number: int, value: int) -> None:
    _put_varint(out, number << 3)
    _put_varint(out, value)


def encode_object_graph(nodes: List[TrackableObject]) -> bytes:
    """Serialize nodes as a ``TrackableObjectGraph``."""
    out = bytearray()
    for node in nodes:
        msg = bytearray()
        for node_id, name in node.children:
            sub = bytearray()
            _put_int(sub, 1, node_id)
            _put_bytes(sub, 2, name.encode())
            _put_bytes(msg, 1, bytes(sub))
        for name, full_name, key in node.attributes:
            sub = bytearray()
            _put_bytes(sub, 1, name.encode())
            _put_bytes(sub, 2, full_name.encode())
            _put_bytes(sub, 3, key.encode())
            _put_bytes(msg, 2, bytes(sub))
        for original, slot, variable in node.slot_variables:
            sub = bytearray()
            _put_int(sub, 1, original)
            _put_bytes(sub, 2, slot.encode())
            _put_int(sub, 3, variable)
            _put_bytes(msg, 3, bytes(sub))
        msg += node.other
        if node.has_checkpoint_values is not None:
            sub = bytearray()
            _put_int(sub, 1, int(node.has_checkpoint_values))
            _put_bytes(msg, 5, bytes(sub))
        _put_bytes(out, 1, bytes(msg))
    return bytes(out)


# ---- reading: graph -> object tree ---------------------------------------------------------------

def escape_local_name(name: str) -> str:
    """A local name as it appears in checkpoint keys (``.`` → ``..``, ``/`` → ``.S``)."""
    return name.replace(".", "..").replace("/", ".S")


MAX_PATHS = 16  # paths kept per object (a hostile graph of diamonds has exponentially many)
MAX_INTO_DEPTH = 1000  # nesting of a restore's into=
MAX_DEPTH = 500  # levels of an object graph (Keras models nest a few dozen)


def variable_paths(nodes: List[TrackableObject]) -> Dict[int, List[Tuple[str, ...]]]:
    """Paths (tuples of local names) from the root to each reachable node,
    shortest first (breadth first, as TensorFlow names its keys), at most
    :data:`MAX_PATHS` per node; cycles are not followed."""
    paths: Dict[int, List[Tuple[str, ...]]] = {0: [()]}
    frontier: List[Tuple[int, Tuple[str, ...], frozenset]] = [(0, (), frozenset([0]))]
    depth = 0
    while frontier:
        depth += 1
        if depth > MAX_DEPTH:
            raise DataLossError(f"the object graph is nested too deeply (over {MAX_DEPTH} levels) to be a checkpoint's")
        step = []
        for i, path, ancestors in frontier:
            for child, name in nodes[i].children:
                if child in ancestors or len(paths.setdefault(child, [])) >= MAX_PATHS:
                    continue
                paths[child].append(path + (name,))
                step.append((child, path + (name,), ancestors | {child}))
        frontier = step
    return {i: p for i, p in paths.items() if p}


def object_tree(nodes: List[TrackableObject], values: Mapping[str, Any]) -> Dict[str, Any]:
    """The object tree of the graph with ``values`` (checkpoint key →
    array) in place of each variable."""
    memo: Dict[int, Any] = {}
    paths = variable_paths(nodes)  # once: every node with slot variables looks its variables up here

    def build(i: int, ancestors: frozenset) -> Any:
        if i in memo:
            return memo[i]
        node = nodes[i]
        attrs = {name: values[key] for name, _, key in node.attributes if key in values}
        if VALUE in attrs and not node.children and len(attrs) == 1:
            memo[i] = attrs[VALUE]
            return memo[i]
        out: Dict[str, Any] = {}
        for child, name in node.children:
            if child in ancestors:
                continue
            sub = build(child, ancestors | {i})
            if sub is not None and not (isinstance(sub, dict) and not sub):
                out[name] = sub
        for name, value in attrs.items():
            out[".ATTRIBUTES/" + name] = value
        slots = _slots(nodes, node, values, paths)
        if slots:
            out[SLOTS] = slots
        memo[i] = out if out else None
        return memo[i]
    try:
        tree = build(0, frozenset())
    except RecursionError:
        raise DataLossError("the object graph is nested too deeply to be a checkpoint's") from None
    return tree if isinstance(tree, dict) else {}


def _slots(nodes: List[TrackableObject], node: TrackableObject, values: Mapping[str, Any],
           paths: Dict[int, List[Tuple[str, ...]]]) -> Dict[str, Any]:
    if not node.slot_variables:
        return {}
    out: Dict[str, Dict[str, Any]] = {}
    for original, slot, variable in node.slot_variables:
        keys = [k for name, _, k in nodes[variable].attributes if name == VALUE and k in values]
        where = paths.get(original)
        if keys and where:
            out.setdefault("/".join(where[0]), {})[slot] = values[keys[0]]
    return out


# ---- writing ------------------------------------------------------------------------------------

def graph_for_state(leaves: Mapping[str, Any], tree: Any) -> Tuple[Dict[str, str], List[TrackableObject], bool]:
    """For a structure ``tree`` of dicts and lists whose leaves are arrays:
    ``(leaf name → checkpoint key, graph nodes, whether a save_counter was
    added)``."""
    nodes = [TrackableObject(has_checkpoint_values=True)]
    keys: Dict[str, str] = {}

    def add(node: Any, path: List[str]) -> int:
        i = len(nodes)
        nodes.append(TrackableObject(has_checkpoint_values=True))
        if "leaf" in node:
            key = "/".join(escape_local_name(p) for p in path) + "/.ATTRIBUTES/" + VALUE
            keys[node["leaf"]] = key
            nodes[i].attributes.append((VALUE, "/".join(path), key))
        else:
            attach(i, node, path)
        return i

    def attach(i: int, node: Any, path: List[str]) -> None:
        for name, child in _children(node, path):
            nodes[i].children.append((add(child, path + [name]), name))

    attach(0, tree, [])
    added = SAVE_COUNTER not in {name for _, name in nodes[0].children}
    if added:
        nodes[0].children.append((len(nodes), SAVE_COUNTER))
        key = SAVE_COUNTER + "/.ATTRIBUTES/" + VALUE
        nodes.append(TrackableObject([], [(VALUE, SAVE_COUNTER, key)], has_checkpoint_values=True))
    return keys, nodes, added


def _children(node: Any, path: List[str]) -> List[Tuple[str, Any]]:
    where = "/".join(path) or "<root>"
    if "dict" in node:
        for k, _ in node["dict"]:
            if type(k) is not str:
                raise InvalidArgumentError(f"object_graph=True: key {k!r} at {where} is not a str (TensorFlow "
                                           "attribute names are)")
        return [(k, v) for k, v in node["dict"]]
    if "list" in node or "tuple" in node:
        return [(str(i), v) for i, v in enumerate(node.get("list", node.get("tuple")))]
    raise InvalidArgumentError(f"object_graph=True: {where} holds a Python value, not a tensor; "
                               "a TensorFlow object graph holds only variables")


def template_tensors(state_leaves: Mapping[str, Any], reader: CheckpointReader) -> Dict[str, Any]:
    """The tensors of a checkpoint with the keys and object graph of the
    template checkpoint open in ``reader`` and the values of ``state_leaves`` (``/``-joined object path → array,
    as :func:`fastckpt.restore` of the template lays them out). Raises
    :class:`InvalidArgumentError` listing every object path the template
    lacks, every variable the state lacks, and every shape or dtype that
    differs."""
    prefix = reader.prefix
    if not reader.has_tensor(OBJECT_GRAPH_KEY):
        raise InvalidArgumentError(f"template {prefix!r} has no TensorFlow 2 object graph")
    graph_raw = reader.get_tensor(OBJECT_GRAPH_KEY)[()]
    nodes = parse_object_graph(graph_raw)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    wanted = _template_keys(nodes)
    out, problems = _match(state_leaves, wanted, shapes, dtypes, reader.get_tensor)
    for key, (_, optional) in wanted.items():  # save_counter, configs: the template's unless given
        if optional and key not in out and key in shapes:
            out[key] = reader.get_tensor(key)
    if problems:
        raise InvalidArgumentError(f"the state does not fit template {prefix!r}:\n  " + "\n  ".join(problems))
    out[OBJECT_GRAPH_KEY] = np.array(graph_raw, dtype=object)
    return out


def _template_paths(nodes: List[TrackableObject]) -> Dict[str, Tuple[List[Tuple[str, ...]], bool]]:
    """Each key of the graph → (the paths, tuples of :func:`object_tree`'s
    dict keys, that lead to its value; whether the state may leave it out:
    save_counter and attributes other than VARIABLE_VALUE, which then come
    from the template)."""
    paths = variable_paths(nodes)
    wanted: Dict[str, Tuple[List[Tuple[str, ...]], bool]] = {}
    for i, node in enumerate(nodes):
        where = paths.get(i, [])
        for name, _, key in node.attributes:
            whole = name == VALUE and not node.children and len(node.attributes) == 1
            wanted[key] = (list(where) if whole else [w + (".ATTRIBUTES/" + name,) for w in where],
                           name != VALUE or where == [(SAVE_COUNTER,)])
    for i, node in enumerate(nodes):  # slot variables are nobody's children: their optimizer places them
        for original, slot, variable in node.slot_variables:
            for name, _, key in nodes[variable].attributes:
                if name == VALUE and original in paths:
                    wanted[key] = ([p + (SLOTS, "/".join(paths[original][0]), slot) for p in paths.get(i, [])],
                                   False)
    # each variable's name (Keras' "hidden/kernel") stands for it too, where it names no other object
    taken = {p for where, _ in wanted.values() for p in where}
    for key, name_path in variable_names(nodes)[0].items():
        if key in wanted and name_path not in taken:
            wanted[key][0].append(name_path)
    return wanted


def _template_keys(nodes: List[TrackableObject]) -> Dict[str, Tuple[List[str], bool]]:
    """:func:`_template_paths` with each path joined by "/"."""
    return {key: (["/".join(p) for p in where], optional) for key, (where, optional) in _template_paths(nodes).items()}


def variable_names(nodes: List[TrackableObject]) -> Tuple[Dict[str, Tuple[str, ...]], List[str]]:
    """Each variable's checkpoint key → the name its framework gave it
    (the attribute's ``full_name``: Keras 3's variable path such as
    ``hidden/kernel`` or ``adam/hidden_kernel_momentum``), split at ``/``;
    and the names that cannot stand for one variable (given to several,
    or a name that is also a prefix of another), which are left out."""
    names: Dict[str, Tuple[str, ...]] = {}
    for node in nodes:
        for name, full, key in node.attributes:
            if name == VALUE and full:
                names[key] = tuple(full.split("/"))
    owners: Dict[Tuple[str, ...], List[str]] = {}
    for key, path in names.items():
        owners.setdefault(path, []).append(key)
    bad = {path for path, keys in owners.items() if len(keys) > 1 or "" in path}
    prefixes = {path[:i] for path in owners for i in range(1, len(path))}
    bad |= {path for path in owners if path in prefixes or any(path[:i] in owners for i in range(1, len(path)))}
    return ({k: p for k, p in names.items() if p not in bad},
            sorted("/".join(p) + (" (" + ", ".join(sorted(owners[p])) + ")") for p in bad))


def name_tree(nodes: List[TrackableObject], values: Mapping[str, Any]) -> Dict[str, Any]:
    """The variables of ``values`` (checkpoint key → array) in a nested dict
    by their names (:func:`variable_names`). Raises
    :class:`InvalidArgumentError` when a name stands for no single variable."""
    names, bad = variable_names(nodes)
    if bad:
        raise InvalidArgumentError(f"by_name=True: {len(bad)} variable name(s) of this checkpoint stand for "
                                   f"no single variable: {', '.join(bad[:5])}; restore by object path instead")
    unnamed = sorted(k for k in values if k not in names and k != OBJECT_GRAPH_KEY and k.endswith("/" + VALUE))
    if unnamed:
        raise InvalidArgumentError(f"by_name=True: {len(unnamed)} variable(s) of this checkpoint have no name: "
                                   f"{', '.join(unnamed[:5])}; restore by object path instead")
    tree: Dict[str, Any] = {}
    for key, path in sorted(names.items(), key=lambda kv: kv[1]):
        if key not in values:
            continue
        at = tree
        for part in path[:-1]:
            at = at.setdefault(part, {})
        at[path[-1]] = values[key]
    return tree


def object_paths(nodes: List[TrackableObject]) -> Dict[str, str]:
    """Each checkpoint key of the graph → its (shortest) object path."""
    return {key: paths[0] for key, (paths, _) in _template_keys(nodes).items() if paths}


def _tied_value(key: str, found: List[str], leaves: Mapping[str, Any],
                original: Callable[[str], Any]) -> Tuple[Any, Optional[str]]:
    """The value of a variable the state holds at several paths (Keras 3:
    a layer's kernel under the model and under the optimizer's
    ``_trainable_variables``): the one value among them that differs from
    the template's, when the others still hold the template's -- replacing
    the array at one path is enough; a problem when two paths were changed to
    different values."""
    first = leaves[found[0]]
    if all(np.array_equal(leaves[other], first) for other in found[1:]):
        return first, None
    stored = original(key)
    changed = [w for w in found if not np.array_equal(leaves[w], stored)]
    if all(np.array_equal(leaves[w], leaves[changed[0]]) for w in changed[1:]):
        return leaves[changed[0]], None
    return first, (f"conflict: {changed[0]} and {changed[1]} are one variable (checkpoint key {key}) given two "
                   "different new values")


def _match(leaves: Mapping[str, Any], wanted: Dict[str, Tuple[List[str], bool]], shapes: Mapping[str, List[int]],
           dtypes: Mapping[str, Any], original: Callable[[str], Any]) -> Tuple[Dict[str, Any], List[str]]:
    out: Dict[str, Any] = {}
    problems: List[str] = []
    used = set()
    for key, (where, optional) in wanted.items():
        found = [w for w in where if w in leaves]
        used.update(found)
        if not found:
            if not optional:
                    problems.append(f"missing: {where[0] if where else key} (checkpoint key {key})")
            continue
        value = leaves[found[0]]
        if value.dtype.kind in "OSU" or dtypes[key] == np.dtype(object):
            out[key] = value
            continue
        if len(found) > 1:
            value, problem = _tied_value(key, found, leaves, original)
            if problem:
                problems.append(problem)
        if list(value.shape) != list(shapes[key]):
            problems.append(f"shape: {found[0]} is {list(value.shape)}, the template's is {list(shapes[key])}")
        elif value.dtype != dtypes[key]:
            problems.append(f"dtype: {found[0]} is {value.dtype}, the template's is {np.dtype(dtypes[key])}")
        out[key] = value
    for name in sorted(set(leaves) - used):
        problems.append(f"not in the template: {name}")
    return out, problems


# ---- the two entry points: save(object_graph=True / template=) and restore ---------------------

def object_graph_tensors(leaves: Mapping[str, Any], tree: Any) -> Tuple[Dict[str, Any], Any, Dict[str, Any]]:
    """``(tensors, tree, extra)`` of a state saved with ``object_graph=True``:
    leaves renamed to their checkpoint keys (the structure tree renamed to
    match, so fastckpt restores the state exactly), and the extra tensors
    only TensorFlow reads: save_counter (when the state has none) and the
    object graph."""
    if tree is None:  # a flat dict: each name is an attribute of the root
        tree = {"dict": [[n, {"leaf": n}] for n in leaves]}
    keys, nodes, added = graph_for_state(leaves, tree)
    tensors: Dict[str, Any] = {keys[n]: v for n, v in leaves.items()}
    extra: Dict[str, Any] = {OBJECT_GRAPH_KEY: np.array(encode_object_graph(nodes), dtype=object)}
    if added:
        extra[SAVE_COUNTER + "/.ATTRIBUTES/" + VALUE] = np.array(1, np.int64)
    return tensors, _renamed(tree, keys), extra


def _renamed(node: Any, keys: Mapping[str, str]) -> Any:
    if "leaf" in node:
        return {**node, "leaf": keys[node["leaf"]]}
    if "dict" in node:
        return {**node, "dict": [[k, _renamed(v, keys)] for k, v in node["dict"]]}
    kind = "list" if "list" in node else "tuple"
    return {**node, kind: [_renamed(v, keys) for v in node[kind]]}


def restore_object_tree(reader: Any, into: Optional[Any] = None, by_name: bool = False) -> Dict[str, Any]:
    """The object tree of a TensorFlow 2 checkpoint open in ``reader``; with
    ``into`` (a nested dict of arrays laid out as that tree, or part of it,
    where a checkpoint key may stand for its variable), its arrays are
    filled in place and put in the tree. Paths are matched key by key: a
    local name ``"a/b"`` and the path a → b are two variables. With
    ``by_name``, the tree (and ``into``) are laid out by the variables'
    names instead (:func:`name_tree`)."""
    nodes = parse_object_graph(reader.get_tensor(OBJECT_GRAPH_KEY)[()])
    wanted = _template_paths(nodes)
    keys = [k for k in wanted if reader.has_tensor(k)]
    targets: Dict[str, Any] = {}
    if into is not None:
        by_path = {p: k for k, (paths, _) in wanted.items() for p in paths}
        for k in reader.tensor_names():  # a checkpoint key, as load_checkpoint lists them (the graph's too)
            by_path.setdefault((k,), k)
        leaves = _array_leaves(into)
        unknown = sorted("/".join(p) for p in leaves if p not in by_path)
        if unknown:
            raise InvalidArgumentError(f"into: {len(unknown)} array(s) the checkpoint's object graph does not "
                                       f"have: {', '.join(unknown[:5])}")
        targets = {by_path[p]: v for p, v in leaves.items()}
        reader.read(into=targets)
    values = reader.read([k for k in keys if k not in targets])
    values.update(targets)
    return name_tree(nodes, values) if by_name else object_tree(nodes, values)


def _array_leaves(into: Any) -> Dict[Tuple[str, ...], Any]:
    """The arrays of a nested ``into``, by the tuple of keys leading to each
    (numpy views of framework tensors)."""
    out: Dict[Tuple[str, ...], Any] = {}
    stack: List[Tuple[Tuple[str, ...], Any]] = [((), into)]
    while stack:
        path, x = stack.pop()
        if len(path) > MAX_INTO_DEPTH:
            raise InvalidArgumentError(f"into is nested deeper than {MAX_INTO_DEPTH} levels")
        if isinstance(x, Mapping):
            stack.extend((path + (str(k),), v) for k, v in x.items())
        elif isinstance(x, (list, tuple)):
            stack.extend((path + (str(i),), v) for i, v in enumerate(x))
        elif path and is_array(x):
            out[path] = to_numpy(x)
    return out
