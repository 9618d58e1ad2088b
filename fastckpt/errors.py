"""fastckpt's exceptions.

Every error fastckpt raises on purpose is a :class:`CheckpointError`. Each
subclass also derives from the builtin a caller would naturally catch, so
``except FileNotFoundError`` or ``except ValueError`` keep working.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "NotFoundError",
    "TensorNotFoundError",
    "DataLossError",
    "InvalidArgumentError",
    "UnsupportedError",
    "CheckpointIOError",
    "ConflictError",
]


class CheckpointError(Exception):
    """Base class of every error fastckpt raises."""


class NotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint, a file of one, or a state file does not exist."""


class TensorNotFoundError(NotFoundError, KeyError):
    """A tensor name is not in the checkpoint (also a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DataLossError(CheckpointError, ValueError):
    """A file is corrupt, truncated or inconsistent; a checksum failed.

    The message names the file and, where one is involved, the tensor.
    """


class InvalidArgumentError(CheckpointError, ValueError):
    """An argument is not acceptable (bad name, dtype, shape, option)."""


class UnsupportedError(CheckpointError, NotImplementedError):
    """The checkpoint is valid but uses a feature fastckpt does not read
    (for example DT_VARIANT tensors or snappy-compressed index blocks)."""


class CheckpointIOError(CheckpointError, OSError):
    """A system call failed while reading or writing; ``errno`` is set.

    Construct as ``CheckpointIOError(errno, message, filename)``.
    """


class ConflictError(CheckpointError, FileExistsError):
    """A conditional write to an object store lost: another writer created
    or replaced the object after it was read (a stale writer fails loudly,
    and writes nothing)."""
