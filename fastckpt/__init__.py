"""fastckpt: TensorFlow-format checkpoints (tensor bundle V2) from a C core.

Files TensorFlow reads and writes (``PREFIX.index``, ``PREFIX.data-*``, the
``checkpoint`` state file), written and read in parallel with checksums::

    saver = fastckpt.Saver(max_to_keep=5)
    prefix = saver.save(state, "my_model/my-model", global_step=1000)
    ckpt = fastckpt.get_checkpoint_state("my_model")
    state = saver.restore(ckpt.model_checkpoint_path)
"""

from fastckpt._version import __version__

try:
    from fastckpt import _core  # noqa: F401
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError(
        "fastckpt's compiled core (fastckpt._core) is missing or broken: "
        f"{e}. Build it with `pip install -e .` (needs a C compiler and Cython)."
    ) from e

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any, Optional, Sequence

from fastckpt.errors import (CheckpointError, CheckpointIOError, ConflictError, DataLossError, InvalidArgumentError,
                             NotFoundError, TensorNotFoundError, UnsupportedError)
from fastckpt.bundle.reader import CheckpointReader
from fastckpt.bundle.slices import Shard
from fastckpt.bundle.writer import write_bundle
from fastckpt.directory.locate import list_variables, load_checkpoint, read_bundle
from fastckpt.directory.recovery import GarbageReport, collect_garbage
from fastckpt.directory.state import (CheckpointState, get_checkpoint_state, latest_checkpoint,
                                      update_checkpoint_state)
from fastckpt.formats.convert import convert
from fastckpt.formats.diff import Diff, diff
from fastckpt.formats.inspect import inspect_checkpoint
from fastckpt.manager import CheckpointManager
from fastckpt.restoring import read_meta
from fastckpt.restoring import restore_structure as restore
from fastckpt.saver import Saver, save
from fastckpt.saving import SaveOptions
from fastckpt.verify import VerifyReport, verify_checkpoint, verify_path
from fastckpt.storage.s3 import configure as configure_s3

# Modules of fastckpt 0.5 and earlier, before the layers became folders:
# ``import fastckpt.reader`` and ``from fastckpt.state import ...`` keep working.
MOVED_MODULES = {
    "fsutil": "fastckpt.storage.fsutil", "locking": "fastckpt.storage.locking",
    **{m: f"fastckpt.bundle.{m}" for m in ("naming", "dtypes", "records", "slices", "frameworks", "lazy", "files",
                                            "compressed", "readplan", "regions", "writer", "reader")},
    "objectgraph": "fastckpt.structure.objectgraph",
    **{m: f"fastckpt.directory.{m}" for m in ("state", "retention", "commit", "recycle")},
    "summary": "fastckpt.formats.inspect",
    "bench_loop": "fastckpt.bench.loop", "bench_procs": "fastckpt.bench.procs", "bench_zstd": "fastckpt.bench.zstd",
}


class _MovedModuleLoader(importlib.abc.Loader):
    """Imports a moved module under its old name as the new module itself
    (one module object: monkeypatching either name patches both)."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return None

    def exec_module(self, module: ModuleType) -> None:
        sys.modules[module.__name__] = importlib.import_module(MOVED_MODULES[module.__name__.rpartition(".")[2]])


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None) -> Optional[importlib.machinery.ModuleSpec]:
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader())


sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str) -> Any:
    """``fastckpt.reader`` and the other moved modules, as attributes."""
    if name in MOVED_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointIOError",
    "CheckpointReader",
    "CheckpointState",
    "ConflictError",
    "configure_s3",
    "GarbageReport",
    "DataLossError",
    "Diff",
    "InvalidArgumentError",
    "NotFoundError",
    "SaveOptions",
    "Saver",
    "Shard",
    "TensorNotFoundError",
    "UnsupportedError",
    "collect_garbage",
    "convert",
    "diff",
    "get_checkpoint_state",
    "inspect_checkpoint",
    "latest_checkpoint",
    "list_variables",
    "load_checkpoint",
    "read_bundle",
    "read_meta",
    "restore",
    "save",
    "update_checkpoint_state",
    "VerifyReport",
    "verify_checkpoint",
    "verify_path",
    "write_bundle",
]
