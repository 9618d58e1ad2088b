# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The bridge to the C core (csrc/). The only module that sees both worlds:
it takes Python buffers, releases the GIL around I/O and checksums, and turns
C status codes into fastckpt exceptions in one place (``_raise``, below).
The C API is declared once in ``_core.pxd``; the bridge is split by concept
into the files included at the end."""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.ref cimport Py_INCREF
from cpython.unicode cimport PyUnicode_AsUTF8String, PyUnicode_DecodeUTF8
cimport numpy as cnp
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t, uintptr_t, INT64_MAX
from libc.stdlib cimport malloc, calloc, free, qsort
from libc.string cimport memcmp, memset

from fastckpt.bundle.records import IndexEntry
from .errors import (CheckpointIOError, DataLossError, InvalidArgumentError,
                     UnsupportedError, CheckpointError)

cnp.import_array()

# ---- the one error path ------------------------------------------------------

cdef object _raise(fc_status *st, str context, object describe=None):
    """Raise the fastckpt exception for a failed C status. ``describe(i)``
    names failing item i (a tensor and its file) for the message."""
    msg = st.msg.decode("utf-8", "replace")
    if describe is not None and st.item >= 0:
        context = describe(st.item)
    text = f"{context}: {msg}" if context else msg
    if st.code == FC_IO:
        import os
        raise CheckpointIOError(st.err_no, f"{text}: {os.strerror(st.err_no)}")
    if st.code == FC_NOMEM:
        raise MemoryError(text)
    if st.code == FC_INVALID:
        raise InvalidArgumentError(text)
    if st.code == FC_UNSUPPORTED:
        raise UnsupportedError(text)
    if st.code == FC_DATA_LOSS:
        raise DataLossError(text)
    raise CheckpointError(text)


cdef class _Buffer:
    """Holds a Py_buffer for the lifetime of the object."""
    cdef Py_buffer view
    cdef bint held

    def __cinit__(self, obj, bint writable=False):
        PyObject_GetBuffer(obj, &self.view, PyBUF_WRITABLE if writable else PyBUF_SIMPLE)
        self.held = True

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)


include "_crc.pxi"
include "_format.pxi"
include "_io.pxi"
include "_plan.pxi"
include "_zstd.pxi"
