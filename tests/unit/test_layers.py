"""The floor plan of the package, checked from its source: layers as
folders, imports running downward only (no loop, no import hidden inside a
function to dodge one), no private name imported across modules, a small
top folder. The same check runs from the command line:
``python3 -m tests.unit.test_layers``."""

from __future__ import annotations

import ast
import pathlib
import sys
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "fastckpt"

# Bottom up. A module may import from its own layer's folder and from lower
# layers; layers of the same height are side by side and never import each
# other (a directory of checkpoints knows nothing of nesting, and nesting
# nothing of directories).
LAYERS: Dict[str, int] = {
    "fastckpt._version": 0, "fastckpt.errors": 0, "fastckpt._core": 0,
    "fastckpt.storage": 1,
    "fastckpt.bundle": 2,
    "fastckpt.structure": 3, "fastckpt.directory": 3,
    "fastckpt.comm": 4, "fastckpt.collective": 5,
    "fastckpt.saving": 6, "fastckpt.restoring": 6, "fastckpt.verify": 6,
    "fastckpt.saver": 7, "fastckpt.manager": 7, "fastckpt.formats": 7,
    "fastckpt.bench": 8, "fastckpt.cli": 9, "fastckpt.__main__": 10, "fastckpt": 10,
}
# The one import inside functions that is allowed: the command line loads the
# benchmark only when ``fastckpt bench`` runs (it is not a loop being dodged).
LAZY_ALLOWED = {("fastckpt.cli", "fastckpt.bench")}
# Modules, not names: the compiled bridge (its own unit tests call its entry
# points) and the version.
PRIVATE_MODULES_ALLOWED = {"_core", "_version"}
TOP_FOLDER_LIMIT = 15


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> Dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(modules: Dict[str, pathlib.Path], importer: str, node: ast.ImportFrom) -> str:
    """The absolute module ``from X import ...`` names."""
    if not node.level:
        return node.module or ""
    is_package = modules.get(importer, pathlib.Path()).name == "__init__.py"
    base = importer.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(modules: Dict[str, pathlib.Path], name: str) -> Iterator[Tuple[str, List[str], bool, int]]:
    """``(target module, names, inside a function, line)`` of each fastckpt import."""
    tree = ast.parse(modules[name].read_text())

    def walk(node: ast.AST, in_function: bool) -> Iterator[Tuple[str, List[str], bool, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom):
                target = resolve(modules, name, child)
                if target == "fastckpt" or target.startswith("fastckpt."):
                    yield target, [a.name for a in child.names], in_function, child.lineno
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name == "fastckpt" or a.name.startswith("fastckpt."):
                        yield a.name, [], in_function, child.lineno
            walk_in = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from walk(child, walk_in)
    yield from walk(tree, False)


def edges(modules: Dict[str, pathlib.Path]) -> Dict[str, Set[str]]:
    """Module → the fastckpt modules it imports at module level (``from
    pkg import sub`` counts as importing ``pkg.sub``)."""
    out: Dict[str, Set[str]] = {m: set() for m in modules}
    for m in modules:
        for target, names, in_function, _ in imports(modules, m):
            if in_function:
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules or n == "_core"]
            out[m].update(subs if subs and len(subs) == len(names) else [target])
    return out


def layer_of(module: str) -> Tuple[str, int]:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import loop, or [] (iterative depth-first search)."""
    state: Dict[str, int] = {}
    for start in graph:
        if state.get(start):
            continue
        stack: List[Tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in graph:
                    continue
                if state.get(child) == 1:
                    return path[path.index(child):] + [child]
                if not state.get(child):
                    state[child] = 1
                    stack.append((child, iter(sorted(graph[child]))))
                    path.append(child)
                    break
            else:
                state[node] = 2
                stack.pop()
                path.pop()
    return []


def test_no_import_loop():
    cycle = find_cycle(edges(package_modules()))
    assert not cycle, "import loop: " + " -> ".join(cycle)


def test_no_fastckpt_import_inside_a_function():
    modules = package_modules()
    hidden = [f"{m}:{line} imports {target}" for m in modules for target, _, inside, line in imports(modules, m)
              if inside and not any(m == a and (target == b or target.startswith(b + ".")) for a, b in LAZY_ALLOWED)]
    assert not hidden, "imports inside functions:\n" + "\n".join(hidden)


def test_imports_run_downward():
    modules = package_modules()
    upward = []
    for m, targets in edges(modules).items():
        (group, height) = layer_of(m)
        for t in targets:
            tgroup, theight = layer_of(t)
            if tgroup != group and theight >= height:
                upward.append(f"{m} (layer {height}) imports {t} (layer {theight})")
    assert not upward, "\n".join(upward)


def private_imports(paths: List[pathlib.Path]) -> List[str]:
    found = []
    for p in paths:
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("fastckpt")):
                mod_parts = (node.module or "").split(".")
                for a in node.names:
                    private = a.name.startswith("_") and not a.name.startswith("__")
                    if private and a.name not in PRIVATE_MODULES_ALLOWED:
                        found.append(f"{p.relative_to(ROOT)}:{node.lineno}: {node.module}.{a.name}")
                if any(part.startswith("_") and part not in PRIVATE_MODULES_ALLOWED for part in mod_parts if part):
                    found.append(f"{p.relative_to(ROOT)}:{node.lineno}: {node.module}")
    return found


def test_no_private_name_imported_across_modules():
    paths = [p for d in ("fastckpt", "tests", "benchmarks", "examples") for p in sorted((ROOT / d).rglob("*.py"))]
    found = private_imports(paths)
    assert not found, "private names imported:\n" + "\n".join(found)


def test_top_folder_is_small_and_every_module_has_a_layer():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= TOP_FOLDER_LIMIT, top
    for m in package_modules():
        layer_of(m)


# The storage seam: file-system calls live in fastckpt/storage only. The
# benchmark measures raw file I/O as its baseline, and the command line
# points its own stdout at /dev/null when a pipe closes: neither is a byte of
# a checkpoint.
SEAM_EXEMPT = ("fastckpt/storage/", "fastckpt/bench/")
SEAM_EXEMPT_FUNCTIONS = {"_silence_stdout"}  # cli.py
OS_FILE_CALLS = {"open", "replace", "rename", "link", "symlink", "unlink", "remove", "rmdir", "mkdir", "makedirs",
                 "listdir", "scandir", "read", "write", "pread", "pwrite", "preadv", "pwritev", "readv", "writev",
                 "fsync", "fdatasync", "ftruncate", "truncate", "stat", "lstat", "fstat", "close", "lseek", "fdopen",
                 "dup", "dup2", "utime", "posix_fallocate", "sendfile", "copy_file_range", "statvfs", "readlink"}
PATH_FILE_CALLS = {"exists", "lexists", "isdir", "isfile", "islink", "getsize", "getmtime", "samefile", "realpath"}


def file_system_calls(path: pathlib.Path) -> List[str]:
    """``os`` file calls, ``os.path`` queries of the disk, ``open()``,
    ``mmap.mmap`` and ``shutil`` calls in one module."""
    found = []
    tree = ast.parse(path.read_text())
    exempt = {id(n) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef) and fn.name in SEAM_EXEMPT_FUNCTIONS
              for n in ast.walk(fn)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or id(node) in exempt:
            continue
        f = node.func
        text = ast.unparse(f)
        if (isinstance(f, ast.Name) and f.id == "open") or text in ("mmap.mmap", "io.open") or \
                text.startswith("shutil.") or \
                (text.startswith("os.") and text.count(".") == 1 and text[3:] in OS_FILE_CALLS) or \
                (text.startswith("os.path.") and text[8:] in PATH_FILE_CALLS):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text}()")
    return found


def test_every_file_system_call_goes_through_storage():
    found = [c for p in sorted(PACKAGE.rglob("*.py"))
             if not str(p.relative_to(ROOT)).startswith(SEAM_EXEMPT)
             for c in file_system_calls(p)]
    assert not found, "file-system calls outside fastckpt/storage:\n" + "\n".join(found)


def test_the_seam_check_sees_a_direct_call(tmp_path):
    module = ROOT / "tests" / "unit" / "_seam_probe.py"
    module.write_text("import os\nos.unlink('x')\nos.path.exists('y')\nopen('z')\nos.path.join('a', 'b')\n")
    try:
        found = file_system_calls(module)
    finally:
        module.unlink()
    assert [c.rsplit(": ", 1)[1] for c in found] == ["os.unlink()", "os.path.exists()", "open()"]


def test_the_check_catches_a_loop_and_a_hidden_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("old", ["reader", "state", "commit", "writer", "objectgraph", "locking",
                                 "naming", "slices", "summary", "bench_zstd"])
def test_old_module_paths_still_import(old):
    import importlib

    import fastckpt
    module = importlib.import_module(f"fastckpt.{old}")
    assert module is importlib.import_module(fastckpt.MOVED_MODULES[old])
    assert getattr(fastckpt, old) is module


def test_structure_package_keeps_the_old_module_names():
    from fastckpt.structure import STRUCTURE_KEY, flatten, parse_structure_record, unflatten  # noqa: F401

    import numpy as np

    leaves, tree = flatten({"a": [np.ones(2)]})
    assert STRUCTURE_KEY == "_FASTCKPT_STRUCTURE" and list(leaves) == ["a/0"]
    assert unflatten(tree, leaves)["a"][0] is leaves["a/0"]


if __name__ == "__main__":  # python3 -m tests.unit.test_layers
    problems = 0
    for check in (test_no_import_loop, test_no_fastckpt_import_inside_a_function, test_imports_run_downward,
                  test_no_private_name_imported_across_modules, test_top_folder_is_small_and_every_module_has_a_layer,
                  test_every_file_system_call_goes_through_storage):
        try:
            check()
            print(f"ok    {check.__name__}")
        except AssertionError as e:
            problems += 1
            print(f"FAIL  {check.__name__}: {e}")
    sys.exit(1 if problems else 0)
