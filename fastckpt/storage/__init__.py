"""The storage seam: every byte fastckpt reads or writes, and every name it
creates, renames or deletes, goes through this package -- the layers above
call no file-system function themselves (``tests/unit/test_layers.py``
checks the source for it).

- :mod:`fastckpt.storage.fs`: the interface for names, which the layers
  above call (``fs.exists``, ``fs.listdir``, ``fs.delete``, ``fs.replace``,
  ``fs.link``, ...): each call asks ``fs.backend(path)`` for the
  implementation that holds the path -- the local file system today, an
  object store as another implementation of the same ``Storage`` protocol.
- :mod:`fastckpt.storage.local`: the local implementation -- what is there
  (``exists``, ``present``, ``is_dir``, ``listdir``, ``size``, ``identity``),
  what changes it (``delete``, ``replace``, ``rename``, ``link``, ``copy``),
  and descriptors (``pread_into``, ``write_all``, ``fsync``, ``truncate``,
  ``map_read``: the zero-copy path of the C engine, a capability of local
  files).
- :mod:`fastckpt.storage.locking`: regular-file opens that never block on a
  FIFO, locked temporaries, the directory lock, leftover cleanup, fork safety.
- :mod:`fastckpt.storage.fsutil`: fsyncs of files and directories, directory
  creation, atomic small files, name-length checks, ``OSError`` as
  :class:`~fastckpt.CheckpointIOError`.
- :mod:`fastckpt.storage.fileio`: whole files and descriptors read with
  fastckpt's errors.

It imports nothing of fastckpt but its errors: the bottom layer.
"""
