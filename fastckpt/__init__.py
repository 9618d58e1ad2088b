"""fastckpt: TensorFlow-format checkpoints (tensor bundle V2) from a C core.

Files TensorFlow reads and writes (``PREFIX.index``, ``PREFIX.data-*``, the
``checkpoint`` state file), written and read in parallel with checksums::

    saver = fastckpt.Saver(max_to_keep=5)
    prefix = saver.save(state, "my_model/my-model", global_step=1000)
    ckpt = fastckpt.get_checkpoint_state("my_model")
    state = saver.restore(ckpt.model_checkpoint_path)
"""

from ._version import __version__

try:
    from . import _core  # noqa: F401
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError(
        "fastckpt's compiled core (fastckpt._core) is missing or broken: "
        f"{e}. Build it with `pip install -e .` (needs a C compiler and Cython)."
    ) from e

from .errors import (CheckpointError, CheckpointIOError, DataLossError, InvalidArgumentError,
                     NotFoundError, TensorNotFoundError, UnsupportedError)
from .reader import CheckpointReader, list_variables, load_checkpoint, read_bundle
from .commit import GarbageReport, collect_garbage
from .convert import convert
from .diff import Diff, diff
from .manager import CheckpointManager
from .saver import Saver, save
from .state import (CheckpointState, get_checkpoint_state, latest_checkpoint,
                    update_checkpoint_state)
from .slices import Shard
from .structure import read_meta
from .structure import restore_structure as restore
from .summary import inspect_checkpoint
from .verify import VerifyReport, verify_checkpoint, verify_path
from .writer import write_bundle

__all__ = [
    "__version__",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointIOError",
    "CheckpointReader",
    "CheckpointState",
    "GarbageReport",
    "DataLossError",
    "Diff",
    "InvalidArgumentError",
    "NotFoundError",
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
