# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The bridge to the C core (csrc/). The only module that sees both worlds:
it takes Python buffers, releases the GIL around I/O and checksums, and turns
C status codes into fastckpt exceptions in one place (``_raise``)."""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.ref cimport Py_INCREF
from cpython.unicode cimport PyUnicode_AsUTF8String, PyUnicode_DecodeUTF8

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
cimport numpy as cnp
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcmp, memset

from .records import IndexEntry
from .errors import (CheckpointIOError, DataLossError, InvalidArgumentError,
                     UnsupportedError, CheckpointError)

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    # both steal a reference to the dtype (numpy's .pxd leaves them out for that reason)
    object PyArray_Empty(int nd, cnp.npy_intp *dims, cnp.dtype descr, int fortran)
    ctypedef struct PyTypeObject:
        pass
    PyTypeObject PyArray_Type
    object PyArray_NewFromDescr(PyTypeObject *subtype, cnp.dtype descr, int nd, cnp.npy_intp *dims,
                                cnp.npy_intp *strides, void *data, int flags, object obj)

cdef extern from "fastckpt.h" nogil:
    enum:
        FC_OK, FC_INVALID, FC_DATA_LOSS, FC_IO, FC_NOMEM, FC_UNSUPPORTED
        FC_MAX_RANK
    ctypedef struct fc_status:
        int code
        int err_no
        int64_t item
        char msg[320]
    void fc_status_clear(fc_status *st)
    ctypedef struct fc_buf:
        uint8_t *p
        size_t len
        size_t cap
    void fc_buf_free(fc_buf *b)
    int fc_buf_append(fc_buf *b, const void *data, size_t n)

    uint32_t fc_crc32c_extend(uint32_t crc, const void *data, size_t n)
    uint32_t fc_crc32c_extend_portable(uint32_t crc, const void *data, size_t n)
    uint32_t fc_crc32c_combine(uint32_t a, uint32_t b, uint64_t len_b)
    uint32_t fc_crc32c_parallel(const void *data, uint64_t n, int nthreads)
    int fc_crc32c_hw_available()
    uint32_t fc_crc_mask(uint32_t c)
    uint32_t fc_crc_unmask(uint32_t m)

    size_t fc_put_varint(uint8_t *out, uint64_t v)
    int fc_get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)

    ctypedef struct fc_extent:
        int64_t start
        int64_t length
    ctypedef struct fc_entry_view:
        int32_t dtype
        int32_t rank
        const int64_t *dims
        int32_t shard_id
        int64_t offset
        int64_t size
        uint32_t crc32c
        int has_crc
        int32_t num_slices
        const fc_extent *extents
    ctypedef struct fc_header:
        int32_t num_shards
        int32_t endianness
        int32_t producer
        int32_t min_consumer
        int32_t has_version
        int32_t bad_consumer_1
    int fc_encode_header(fc_buf *out, const fc_header *h, fc_status *st)
    int fc_decode_header(const uint8_t *p, size_t n, fc_header *h, fc_status *st)
    int fc_encode_entry(fc_buf *out, const fc_entry_view *e, fc_status *st)
    int fc_grow(void **arr, size_t *cap, size_t need, size_t elem)
    int fc_plan_layout(const uint64_t *sizes, size_t n, int32_t num_shards, uint64_t alignment,
                       int32_t *shards, uint64_t *offsets, uint64_t *shard_ends, fc_status *st)
    int fc_index_build(const fc_header *h, const uint8_t *keys, const uint32_t *key_off,
                       const uint32_t *key_len, const fc_entry_view *entries, size_t n,
                       fc_table_builder *tb, const uint8_t **out, size_t *out_len, int64_t *duplicate,
                       fc_status *st)

    ctypedef struct fc_table_builder:
        pass
    fc_table_builder *fc_table_builder_new()
    void fc_table_builder_free(fc_table_builder *tb)
    int fc_table_add(fc_table_builder *tb, const uint8_t *key, size_t klen,
                     const uint8_t *val, size_t vlen, fc_status *st)
    int fc_table_finish(fc_table_builder *tb, const uint8_t **out, size_t *len, fc_status *st)
    ctypedef int (*fc_table_visit)(void *ctx, const uint8_t *key, size_t klen,
                                   const uint8_t *val, size_t vlen, fc_status *st)
    int fc_table_iterate(const uint8_t *data, size_t len, fc_table_visit visit,
                         void *ctx, fc_status *st)

    ctypedef struct fc_entry:
        uint32_t key_off, key_len
        int32_t dtype
        int32_t rank
        uint32_t dims_off
        int32_t shard_id
        int64_t offset
        int64_t size
        int64_t num_elements
        uint32_t crc32c
        int32_t has_crc
        int32_t num_slices
        uint32_t extents_off
    ctypedef struct fc_index:
        fc_header header
        int have_header
        fc_entry *entries
        size_t n
        uint8_t *keys
        int64_t *dims
        fc_extent *extents
    int fc_index_parse(fc_index *idx, const uint8_t *data, size_t len, fc_status *st)
    void fc_index_free(fc_index *idx)
    int64_t fc_index_find(const fc_index *idx, const uint8_t *key, size_t klen)
    int fc_decode_entry_into(fc_index *idx, const uint8_t *p, size_t n, fc_entry *e,
                             fc_status *st)
    int fc_dtype_size(int32_t dtype)
    int fc_sort_keys(const uint8_t *arena, const uint32_t *off, const uint32_t *len, size_t n,
                     uint32_t *order)

    int fc_string_payload_size(const uint64_t *lens, size_t n, uint64_t *size, fc_status *st)
    int fc_string_encode(const uint8_t *const *ptrs, const uint64_t *lens, size_t n,
                         uint8_t *out, uint64_t out_len, uint32_t *crc, fc_status *st)
    int fc_string_decode(const uint8_t *payload, uint64_t size, uint64_t n, uint64_t *lens,
                         uint64_t *data_off, uint32_t masked_crc, int verify, int big_endian,
                         fc_status *st)

    ctypedef struct fc_io_item:
        int fd
        uint64_t file_off
        uint64_t len
        void *buf
        uint32_t crc
        uint8_t verify
    enum:
        FC_IO_READ, FC_IO_WRITE, FC_IO_WRITE_UNCACHED
    int fc_io_run(fc_io_item *items, size_t n, int mode, int nthreads,
                  uint64_t piece_bytes, fc_status *st)


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


# ---- checksums and varints ------------------------------------------------------

def crc32c(data, uint32_t crc=0):
    """CRC32C of a buffer, continuing from ``crc`` (hardware when available)."""
    cdef _Buffer b = _Buffer(data)
    cdef uint32_t r
    with nogil:
        r = fc_crc32c_extend(crc, b.view.buf, <size_t>b.view.len)
    return r


def crc32c_portable(data, uint32_t crc=0):
    """CRC32C through the portable table code (for tests)."""
    cdef _Buffer b = _Buffer(data)
    return fc_crc32c_extend_portable(crc, b.view.buf, <size_t>b.view.len)


def crc32c_parallel(data, int threads=2):
    """CRC32C of a large buffer on several threads."""
    cdef _Buffer b = _Buffer(data)
    cdef uint32_t r
    with nogil:
        r = fc_crc32c_parallel(b.view.buf, <uint64_t>b.view.len, threads)
    return r


def crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b):
    """CRC of A||B from crc(A), crc(B) and len(B)."""
    return fc_crc32c_combine(crc_a, crc_b, len_b)


def hw_crc_available():
    """True when the SSE4.2 CRC32C instruction is in use."""
    return bool(fc_crc32c_hw_available())


def mask_crc(uint32_t crc):
    """LevelDB's masked form of a CRC."""
    return fc_crc_mask(crc)


def unmask_crc(uint32_t masked):
    """Inverse of :func:`mask_crc`."""
    return fc_crc_unmask(masked)


def encode_varint(uint64_t v):
    """LEB128 bytes of an unsigned 64-bit value."""
    cdef uint8_t out[10]
    cdef size_t n = fc_put_varint(out, v)
    return PyBytes_FromStringAndSize(<char *>out, n)


def decode_varint(data):
    """(value, bytes consumed) of the varint at the start of ``data``."""
    cdef _Buffer b = _Buffer(data)
    cdef const uint8_t *p = <const uint8_t *>b.view.buf
    cdef const uint8_t *start = p
    cdef uint64_t v
    if fc_get_varint(&p, start + b.view.len, &v):
        raise DataLossError("truncated or over-long varint")
    return v, <size_t>(p - start)


# ---- protobuf messages ---------------------------------------------------------------

def encode_header(int num_shards=1, int endianness=0, int producer=1, int min_consumer=0,
                  bint bad_consumer_1=False, bint has_version=True):
    """Serialized BundleHeaderProto."""
    cdef fc_header h
    cdef fc_buf out
    cdef fc_status st
    memset(&out, 0, sizeof(out))
    fc_status_clear(&st)
    h.num_shards, h.endianness, h.producer = num_shards, endianness, producer
    h.min_consumer, h.bad_consumer_1, h.has_version = min_consumer, bad_consumer_1, has_version
    if fc_encode_header(&out, &h, &st):
        fc_buf_free(&out)
        _raise(&st, "header")
    r = PyBytes_FromStringAndSize(<char *>out.p, out.len)
    fc_buf_free(&out)
    return r


def decode_header(data):
    """Dict of a serialized BundleHeaderProto's fields."""
    cdef _Buffer b = _Buffer(data)
    cdef fc_header h
    cdef fc_status st
    fc_status_clear(&st)
    if fc_decode_header(<const uint8_t *>b.view.buf, <size_t>b.view.len, &h, &st):
        _raise(&st, "header")
    return dict(num_shards=h.num_shards, endianness=h.endianness, producer=h.producer,
                min_consumer=h.min_consumer, bad_consumer_1=bool(h.bad_consumer_1),
                has_version=bool(h.has_version))


cdef int _fill_view(fc_entry_view *e, int64_t *dims, fc_extent *ext, int dtype, shape,
                    int shard_id, int64_t offset, int64_t size, crc, slices) except -1:
    cdef Py_ssize_t i, s
    if len(shape) > FC_MAX_RANK:
        raise InvalidArgumentError(f"rank {len(shape)} is over {FC_MAX_RANK}")
    e.dtype, e.rank, e.dims = dtype, <int32_t>len(shape), dims
    for i in range(len(shape)):
        dims[i] = shape[i]
    e.shard_id, e.offset, e.size = shard_id, offset, size
    e.has_crc = crc is not None
    e.crc32c = crc if crc is not None else 0
    e.num_slices = 0
    e.extents = ext
    if slices:
        e.num_slices = <int32_t>len(slices)
        for s in range(len(slices)):
            if len(slices[s]) != len(shape):
                raise InvalidArgumentError("slice rank differs from the tensor's rank")
            for i in range(len(shape)):
                ext[s * len(shape) + i].start = slices[s][i][0]
                ext[s * len(shape) + i].length = slices[s][i][1]
    return 0


def encode_entry(int dtype, shape, int shard_id=0, int64_t offset=0, int64_t size=0,
                 crc=None, slices=None):
    """Serialized BundleEntryProto. ``crc`` is the masked CRC (or None);
    ``slices`` a list of per-dimension ``(start, length)``, length -1 = full."""
    cdef int64_t dims[FC_MAX_RANK]
    cdef fc_extent *ext = NULL
    cdef fc_entry_view e
    cdef fc_buf out
    cdef fc_status st
    memset(&out, 0, sizeof(out))
    fc_status_clear(&st)
    nslices = len(slices) if slices else 0
    ext = <fc_extent *>malloc(max(1, nslices * len(shape)) * sizeof(fc_extent))
    if ext == NULL:
        raise MemoryError()
    try:
        _fill_view(&e, dims, ext, dtype, shape, shard_id, offset, size, crc, slices)
        if fc_encode_entry(&out, &e, &st):
            _raise(&st, "entry")
        return PyBytes_FromStringAndSize(<char *>out.p, out.len)
    finally:
        free(ext)
        fc_buf_free(&out)


cdef object _entry_tuple(fc_index *idx, fc_entry *e):
    cdef int32_t i, s
    shape = tuple([idx.dims[e.dims_off + i] for i in range(e.rank)])
    slices = None
    if e.num_slices:
        slices = []
        for s in range(e.num_slices):
            slices.append(tuple([(idx.extents[e.extents_off + s * e.rank + i].start,
                                  idx.extents[e.extents_off + s * e.rank + i].length)
                                 for i in range(e.rank)]))
    return IndexEntry(e.dtype, shape, e.shard_id, e.offset, e.size, e.crc32c if e.has_crc else None, slices)


def decode_entry(data):
    """(dtype, shape, shard_id, offset, size, masked crc or None, slices or None)
    of a serialized BundleEntryProto."""
    cdef _Buffer b = _Buffer(data)
    cdef fc_index idx
    cdef fc_entry e
    cdef fc_status st
    memset(&idx, 0, sizeof(idx))
    fc_status_clear(&st)
    try:
        if fc_decode_entry_into(&idx, <const uint8_t *>b.view.buf, <size_t>b.view.len, &e, &st):
            _raise(&st, "entry")
        return _entry_tuple(&idx, &e)
    finally:
        fc_index_free(&idx)


# ---- the SSTable ----------------------------------------------------------------

def build_table(items):
    """An SSTable file of ``(key, value)`` byte pairs in strictly increasing
    key order, with TensorFlow's table options."""
    cdef fc_table_builder *tb = fc_table_builder_new()
    cdef fc_status st
    cdef const uint8_t *out
    cdef size_t n
    if tb == NULL:
        raise MemoryError()
    fc_status_clear(&st)
    try:
        for key, val in items:
            if fc_table_add(tb, key, len(key), val, len(val), &st):
                _raise(&st, f"key {key!r}")
        if fc_table_finish(tb, &out, &n, &st):
            _raise(&st, "table")
        return PyBytes_FromStringAndSize(<const char *>out, n)
    finally:
        fc_table_builder_free(tb)


cdef int _collect(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val,
                  size_t vlen, fc_status *st) noexcept with gil:
    (<list>ctx).append((PyBytes_FromStringAndSize(<const char *>key, klen),
                        PyBytes_FromStringAndSize(<const char *>val, vlen)))
    return 0


def iterate_table(data):
    """Every ``(key, value)`` of an SSTable, checking block CRCs and key order."""
    cdef _Buffer b = _Buffer(data)
    cdef fc_status st
    cdef list out = []
    fc_status_clear(&st)
    if fc_table_iterate(<const uint8_t *>b.view.buf, <size_t>b.view.len, _collect,
                        <void *>out, &st):
        _raise(&st, "")
    return out


cdef bytes _index_bytes(fc_header *h, fc_buf *keys, uint32_t *key_off, uint32_t *key_len,
                        fc_entry_view *entries, size_t n, list names):
    """The .index built by the C core (the one index builder)."""
    cdef fc_table_builder *tb = fc_table_builder_new()
    cdef const uint8_t *out
    cdef size_t out_len
    cdef fc_status st
    cdef int64_t dup
    cdef int rc
    if tb == NULL:
        raise MemoryError()
    fc_status_clear(&st)
    try:
        with nogil:
            rc = fc_index_build(h, keys.p, key_off, key_len, entries, n, tb, &out, &out_len, &dup, &st)
        if rc and dup >= 0:
            raise InvalidArgumentError(f"duplicate tensor name {names[dup]!r}")
        if rc:
            _raise(&st, "index", lambda i: f"tensor {names[i]!r}")
        return PyBytes_FromStringAndSize(<const char *>out, out_len)
    finally:
        fc_table_builder_free(tb)


def build_index(int num_shards, list keys, list dtypes, list shapes, list shard_ids,
                list offsets, list sizes, list crcs, int endianness=0):
    """The .index file of hand-made entries (tests, tools): ``keys`` (bytes)
    in any order, the other lists parallel to it, ``crcs`` masked."""
    cdef size_t n = len(keys), i
    cdef fc_header h
    cdef fc_buf karena
    cdef uint32_t *key_off = <uint32_t *>malloc((n if n else 1) * sizeof(uint32_t))
    cdef uint32_t *key_len = <uint32_t *>malloc((n if n else 1) * sizeof(uint32_t))
    cdef fc_entry_view *entries = <fc_entry_view *>calloc((n if n else 1), sizeof(fc_entry_view))
    cdef int64_t *dims = <int64_t *>malloc((n if n else 1) * FC_MAX_RANK * sizeof(int64_t))
    cdef bytes key
    memset(&karena, 0, sizeof(karena))
    try:
        if key_off == NULL or key_len == NULL or entries == NULL or dims == NULL:
            raise MemoryError()
        for i in range(n):
            key = keys[i]
            key_off[i], key_len[i] = <uint32_t>karena.len, <uint32_t>len(key)
            if fc_buf_append(&karena, PyBytes_AS_STRING(key), len(key)):
                raise MemoryError()
            _fill_view(&entries[i], dims + i * FC_MAX_RANK, NULL, dtypes[i], shapes[i], shard_ids[i],
                       offsets[i], sizes[i], crcs[i], None)
        h.num_shards, h.endianness, h.producer = num_shards, endianness, 1
        h.min_consumer, h.bad_consumer_1, h.has_version = 0, 0, 1
        return _index_bytes(&h, &karena, key_off, key_len, entries, n,
                            [k.decode("utf-8", "replace") for k in keys])
    finally:
        free(key_off); free(key_len); free(entries); free(dims)
        fc_buf_free(&karena)


cdef class Index:
    """A parsed .index file: the header and every entry, checked, in C
    arrays. ``find`` is a binary search; nothing is turned into Python
    objects until asked for."""
    cdef fc_index idx
    cdef bint parsed

    def __cinit__(self, data, str path=""):
        cdef _Buffer b = _Buffer(data)
        cdef fc_status st
        cdef int rc
        fc_status_clear(&st)
        with nogil:
            rc = fc_index_parse(&self.idx, <const uint8_t *>b.view.buf, <size_t>b.view.len, &st)
        if rc:
            _raise(&st, path)
        self.parsed = True

    def __dealloc__(self):
        if self.parsed:
            fc_index_free(&self.idx)

    def __len__(self):
        return self.idx.n

    @property
    def num_shards(self):
        """Number of data files, from the header."""
        return self.idx.header.num_shards

    @property
    def big_endian(self):
        """True when the bundle was written on a big-endian host."""
        return self.idx.header.endianness == 1

    def find(self, bytes key):
        """Entry number of ``key``, or -1."""
        return fc_index_find(&self.idx, <const uint8_t *>PyBytes_AS_STRING(key), len(key))

    def key(self, Py_ssize_t i):
        """The key (bytes) of entry ``i``."""
        cdef fc_entry *e = self._at(i)
        return PyBytes_FromStringAndSize(<const char *>self.idx.keys + e.key_off, e.key_len)

    def keys(self):
        """Every key, in sorted order."""
        cdef size_t i
        cdef fc_entry *e
        out = []
        for i in range(self.idx.n):
            e = &self.idx.entries[i]
            out.append(PyBytes_FromStringAndSize(<const char *>self.idx.keys + e.key_off, e.key_len))
        return out

    def entry(self, Py_ssize_t i):
        """Entry ``i`` as an :class:`~fastckpt.records.IndexEntry`."""
        return _entry_tuple(&self.idx, self._at(i))

    cdef fc_entry *_at(self, Py_ssize_t i) except NULL:
        if i < 0 or <size_t>i >= self.idx.n:
            raise IndexError(i)
        return &self.idx.entries[i]


# ---- string payloads -------------------------------------------------------------

def encode_strings(list items):
    """(payload, unmasked entry CRC) of a DT_STRING tensor of ``bytes``."""
    cdef size_t n = len(items), i
    cdef uint64_t *lens = <uint64_t *>malloc((n if n else 1) * sizeof(uint64_t))
    cdef const uint8_t **ptrs = <const uint8_t **>malloc((n if n else 1) * sizeof(void *))
    cdef uint64_t size
    cdef uint32_t crc
    cdef fc_status st
    cdef bytes out
    fc_status_clear(&st)
    try:
        if lens == NULL or ptrs == NULL:
            raise MemoryError()
        for i in range(n):
            lens[i] = len(<bytes>items[i])
            ptrs[i] = <const uint8_t *>PyBytes_AS_STRING(items[i])
        if fc_string_payload_size(lens, n, &size, &st):
            _raise(&st, "string tensor")
        out = PyBytes_FromStringAndSize(NULL, size)
        if fc_string_encode(ptrs, lens, n, <uint8_t *>PyBytes_AS_STRING(out), size, &crc, &st):
            _raise(&st, "string tensor")
        return out, crc
    finally:
        free(lens)
        free(ptrs)


def decode_strings(payload, uint64_t n, uint32_t masked_crc, bint verify=True,
                   bint big_endian=False, str context=""):
    """The ``n`` byte strings of a DT_STRING payload, checksums checked.

    The payload is checked first without allocating anything (lengths,
    sizes, checksums), so a hostile count costs no memory; only then are
    the ``n`` Python objects made."""
    cdef _Buffer b = _Buffer(payload)
    cdef uint64_t off, i, ln
    cdef int rc
    cdef fc_status st
    cdef const uint8_t *base = <const uint8_t *>b.view.buf
    cdef const uint8_t *p = base
    cdef const uint8_t *end = base + b.view.len
    if n > <uint64_t>b.view.len:
        raise DataLossError(f"{context}: {n} strings cannot fit in {b.view.len} bytes")
    fc_status_clear(&st)
    with nogil:
        rc = fc_string_decode(base, <uint64_t>b.view.len, n, NULL, &off, masked_crc, verify, big_endian, &st)
    if rc:
        _raise(&st, context)
    out = [None] * <Py_ssize_t>n
    for i in range(n):
        fc_get_varint(&p, end, &ln)  # cannot fail: checked above
        out[i] = PyBytes_FromStringAndSize(<const char *>base + off, ln)
        off += ln
    return out


# ---- parallel I/O -------------------------------------------------------------------

def io_run(list fds, list offsets, list buffers, list crcs=None, *, bint write, int threads=1,
           describe=None, uint64_t piece=0, bint uncached=False):
    """Write (``write=True``) or read every buffer at its file offset on up to
    ``threads`` threads with the GIL released. Buffers are any C-contiguous
    buffer (numpy arrays of any dtype, bytes, bytearray).

    Writing returns each buffer's CRC32C. Reading checks each buffer against
    ``crcs[i]`` (unmasked) unless it is None. On failure the exception's
    message starts with ``describe(i)`` for the failing item i. ``uncached``
    writes with RWF_DONTCACHE where the kernel supports it (for data that is
    fsync'd next).
    """
    cdef size_t n = len(buffers), i
    cdef fc_io_item *items = <fc_io_item *>calloc((n if n else 1), sizeof(fc_io_item))
    cdef fc_status st
    cdef int rc
    cdef _Buffer hold
    if items == NULL:
        raise MemoryError()
    held = []
    fc_status_clear(&st)
    try:
        for i in range(n):
            hold = _Buffer(buffers[i], not write)
            held.append(hold)
            items[i].fd = fds[i]
            items[i].file_off = offsets[i]
            items[i].len = <uint64_t>hold.view.len
            items[i].buf = hold.view.buf
            if not write and crcs is not None and crcs[i] is not None:
                items[i].crc = crcs[i]
                items[i].verify = 1
        with nogil:
            rc = fc_io_run(items, n, (FC_IO_WRITE_UNCACHED if uncached else FC_IO_WRITE) if write
                           else FC_IO_READ, threads, piece, &st)
        if rc:
            _raise(&st, "", describe)
        if write:
            return [items[i].crc for i in range(n)]
        return None
    finally:
        free(items)


# ---- the write plan ----------------------------------------------------------------
# One plan for every tensor, made here: the per-tensor work for the common
# case (a str name -> C-contiguous little-endian numeric array) is done in
# C, anything else is turned into a payload by the caller's ``prepare``
# (writer.py) and planned the same way. Shards and offsets come from the C
# planner (fc_plan_layout), the index from the C builder (fc_index_build).

cdef class WritePlan:
    """Per tensor: its key, dtype, shape, shard, offset and payload. Ready
    payloads (arrays written from their own memory, encoded strings) are
    written by :meth:`write`; the others (``staged``: ``(i, source)``
    pairs) are converted piecewise by the caller, which sets their CRC with
    :meth:`set_crc`. Keeps every payload alive until written."""
    cdef fc_io_item *items
    cdef fc_entry_view *entries
    cdef int64_t *dims
    cdef size_t dims_len, dims_cap
    cdef size_t *dims_off
    cdef uint32_t *key_off
    cdef uint32_t *key_len
    cdef uint8_t *ready
    cdef uint8_t *preset
    cdef uint32_t *preset_crc
    cdef fc_buf keys
    cdef Py_ssize_t n
    cdef public list names
    cdef list held
    cdef public list staged
    cdef public list shard_sizes

    def __dealloc__(self):
        free(self.items); free(self.entries); free(self.dims); free(self.dims_off); free(self.key_off)
        free(self.key_len); free(self.ready); free(self.preset); free(self.preset_crc)
        fc_buf_free(&self.keys)

    cdef int _alloc(self, Py_ssize_t n) except -1:
        cdef size_t m = <size_t>(n if n else 1)
        self.n = n
        self.items = <fc_io_item *>calloc(m, sizeof(fc_io_item))
        self.entries = <fc_entry_view *>calloc(m, sizeof(fc_entry_view))
        self.key_off = <uint32_t *>malloc(m * sizeof(uint32_t))
        self.key_len = <uint32_t *>malloc(m * sizeof(uint32_t))
        self.dims_off = <size_t *>malloc(m * sizeof(size_t))
        self.ready = <uint8_t *>calloc(m, 1)
        self.preset = <uint8_t *>calloc(m, 1)
        self.preset_crc = <uint32_t *>calloc(m, sizeof(uint32_t))
        if (self.items == NULL or self.entries == NULL or self.key_off == NULL or self.key_len == NULL
                or self.dims_off == NULL or self.ready == NULL or self.preset == NULL or self.preset_crc == NULL):
            raise MemoryError()
        return 0

    cdef int _add_key(self, Py_ssize_t i, const char *kp, Py_ssize_t klen) except -1:
        if <uint64_t>klen > 0xFFFFFFFFu or self.keys.len > 0xFFFFFFFFu - <uint64_t>klen:
            raise InvalidArgumentError("tensor names too long")
        self.key_off[i], self.key_len[i] = <uint32_t>self.keys.len, <uint32_t>klen
        if fc_buf_append(&self.keys, kp, <size_t>klen):
            raise MemoryError()
        return 0

    cdef int _add_dims(self, Py_ssize_t i, int rank) except -1:
        """Room for tensor ``i``'s ``rank`` dimensions at ``dims_off[i]``."""
        if rank > FC_MAX_RANK:
            raise InvalidArgumentError(f"tensor {self.names[i]!r}: rank {rank} is over {FC_MAX_RANK}")
        if fc_grow(<void **>&self.dims, &self.dims_cap, self.dims_len + <size_t>rank + 1, sizeof(int64_t)):
            raise MemoryError()
        self.entries[i].rank = rank
        self.dims_off[i] = self.dims_len
        return 0

    def shard(self, Py_ssize_t i):
        """The shard of tensor ``i``."""
        return self.entries[i].shard_id

    def offset(self, Py_ssize_t i):
        """The offset of tensor ``i`` in its data file."""
        return self.entries[i].offset

    def set_crc(self, Py_ssize_t i, uint32_t crc):
        """The CRC32C (unmasked) of staged tensor ``i``'s payload."""
        self.items[i].crc = crc

    def write(self, list fds, int threads, bint uncached, list paths):
        """Write every ready payload to ``fds[shard]``, computing its CRC.
        ``paths`` (per shard) name the file in errors."""
        cdef int *shard_fd = <int *>malloc((len(fds) if fds else 1) * sizeof(int))
        cdef size_t *which = NULL
        cdef fc_io_item *run = self.items
        cdef size_t m = <size_t>self.n
        cdef Py_ssize_t i
        cdef fc_status st
        cdef int rc
        try:
            if shard_fd == NULL:
                raise MemoryError()
            for i in range(len(fds)):
                shard_fd[i] = fds[i]
            for i in range(self.n):
                self.items[i].fd = shard_fd[self.entries[i].shard_id]
            if self.staged:  # write only the ready ones
                which = <size_t *>malloc((self.n if self.n else 1) * sizeof(size_t))
                run = <fc_io_item *>malloc((self.n if self.n else 1) * sizeof(fc_io_item))
                if which == NULL or run == NULL:
                    raise MemoryError()
                m = 0
                for i in range(self.n):
                    if self.ready[i]:
                        run[m], which[m] = self.items[i], <size_t>i
                        m += 1
            fc_status_clear(&st)
            with nogil:
                rc = fc_io_run(run, m, FC_IO_WRITE_UNCACHED if uncached else FC_IO_WRITE, threads, 0, &st)
            if rc:
                _raise(&st, "", lambda k: f"tensor {self.names[which[k] if which else k]!r} in "
                                          f"{paths[self.entries[which[k] if which else k].shard_id]}")
            if which != NULL:
                for i in range(<Py_ssize_t>m):
                    self.items[which[i]].crc = run[i].crc
        finally:
            free(shard_fd)
            free(which)
            if run != self.items:
                free(run)

    def index(self, int num_shards):
        """The .index bytes (after every payload is written)."""
        cdef fc_header h
        cdef Py_ssize_t i
        for i in range(self.n):
            self.entries[i].dims = self.dims + self.dims_off[i]  # the arena no longer moves
            self.entries[i].crc32c = fc_crc_mask(self.preset_crc[i] if self.preset[i] else self.items[i].crc)
            self.entries[i].has_crc = 1
        h.num_shards, h.endianness, h.producer = num_shards, 0, 1
        h.min_consumer, h.bad_consumer_1, h.has_version = 0, 0, 1
        return _index_bytes(&h, &self.keys, self.key_off, self.key_len, self.entries, <size_t>self.n,
                            self.names)


def plan_write(tensors, dict enums, int num_shards, int64_t alignment, prepare):
    """The :class:`WritePlan` of ``tensors`` (a mapping of name -> value).

    A ``str`` name with a C-contiguous array of a dtype in ``enums`` (dtype
    -> enum) is planned here; any other item goes through
    ``prepare(name, value)``, which returns ``(key, name, dtype enum, shape,
    payload or None, size, crc or None, source or None)`` or raises."""
    cdef Py_ssize_t n = len(tensors), i = 0, d, klen = 0
    cdef cnp.ndarray arr
    cdef object name, value, enum, descr, last_descr = None
    cdef int32_t last_enum = 0
    cdef const char *kp = NULL
    cdef WritePlan p = WritePlan()
    cdef uint64_t *sizes
    cdef int32_t *shards
    cdef uint64_t *offsets
    cdef uint64_t *ends
    cdef fc_status st
    cdef _Buffer hold
    cdef bytes key
    p._alloc(n)
    p.names, p.held, p.staged = [], [], []
    items = tensors.items() if type(tensors) is dict else list(tensors.items())
    for name, value in items:
        if i >= n:
            raise InvalidArgumentError("the mapping changed size while it was being saved")
        fast = False
        if type(name) is str and cnp.PyArray_CheckExact(value):
            arr = <cnp.ndarray>value
            descr = <object>cnp.PyArray_DESCR(arr)
            if descr is not last_descr:  # most states hold one or two dtypes
                enum = enums.get(descr)
                if enum is not None:
                    last_descr, last_enum = descr, enum
            fast = (descr is last_descr and cnp.PyArray_IS_C_CONTIGUOUS(arr) and len(<str>name) > 0
                    and (<str>name)[0] != "\x00")
            if fast:
                try:
                    kp = PyUnicode_AsUTF8AndSize(name, &klen)  # cached in the str: no new object
                except UnicodeEncodeError:
                    fast = False  # lone surrogates: prepare encodes them
        if fast:
            p.names.append(name)
            p._add_key(i, kp, klen)
            p.entries[i].dtype = last_enum
            p._add_dims(i, cnp.PyArray_NDIM(arr))
            for d in range(cnp.PyArray_NDIM(arr)):
                p.dims[p.dims_len] = cnp.PyArray_DIMS(arr)[d]
                p.dims_len += 1
            p.entries[i].size = <int64_t>cnp.PyArray_NBYTES(arr)
            p.items[i].buf = cnp.PyArray_DATA(arr)
            p.ready[i] = 1
            p.held.append(arr)
        else:
            key, text, dtype, shape, payload, size, crc, source = prepare(name, value)
            p.names.append(text)
            p._add_key(i, PyBytes_AS_STRING(key), len(key))
            p.entries[i].dtype = dtype
            p._add_dims(i, len(shape))
            for d in range(len(shape)):
                p.dims[p.dims_len] = shape[d]
                p.dims_len += 1
            p.entries[i].size = size
            if crc is not None:
                p.preset_crc[i], p.preset[i] = crc, 1
            if payload is not None:
                hold = _Buffer(payload)
                p.held.append(hold)
                p.items[i].buf = hold.view.buf
                p.ready[i] = 1
            else:
                p.staged.append((i, source))
        p.items[i].len = <uint64_t>p.entries[i].size
        i += 1
    if i != n:
        raise InvalidArgumentError("the mapping changed size while it was being saved")
    sizes = <uint64_t *>malloc((n if n else 1) * sizeof(uint64_t))
    shards = <int32_t *>malloc((n if n else 1) * sizeof(int32_t))
    offsets = <uint64_t *>malloc((n if n else 1) * sizeof(uint64_t))
    ends = <uint64_t *>calloc(num_shards, sizeof(uint64_t))
    try:
        if sizes == NULL or shards == NULL or offsets == NULL or ends == NULL:
            raise MemoryError()
        for i in range(n):
            sizes[i] = p.items[i].len
        fc_status_clear(&st)
        if fc_plan_layout(sizes, <size_t>n, num_shards, <uint64_t>alignment, shards, offsets, ends, &st):
            _raise(&st, "plan")
        for i in range(n):
            p.entries[i].shard_id, p.entries[i].offset = shards[i], <int64_t>offsets[i]
            p.items[i].file_off = offsets[i]
        p.shard_sizes = [ends[d] for d in range(num_shards)]
        return p
    finally:
        free(sizes); free(shards); free(offsets); free(ends)


# Tensors up to this size, read into new arrays, share one allocation (each
# array a view into it, aligned to 64 bytes): one page-fault run instead of
# one malloc each. Larger ones get their own, so freeing one frees it.
PACK_MAX_BYTES = 64 * 1024
cdef int64_t _PACK_ALIGN = 64


cdef inline bint _fast_entry_ok(fc_entry *e, list descrs, list fds, list sizes, bint verify):
    if e.num_slices or e.dtype < 0 or e.dtype >= len(descrs) or e.shard_id >= len(fds):
        return False
    return descrs[e.dtype] is not None and not (verify and not e.has_crc) and e.offset + e.size <= sizes[e.shard_id]


def read_fast(Index index, list names, list fds, list sizes, list descrs, bint verify, int threads,
              describe, dict into=None):
    """Read plain tensors into new arrays in C: a dict name -> array, or None
    when some tensor needs the general path (missing, string, sliced,
    big-endian, out of range, no checksum). ``names`` None means every
    tensor; ``fds``/``sizes`` per shard; ``descrs[enum]`` a numpy dtype or
    None. With ``into`` (name -> array), its arrays are filled in place when
    each is a writeable C-contiguous ndarray of the stored dtype and shape.
    New arrays of up to ``PACK_MAX_BYTES`` are views into one allocation."""
    cdef fc_index *idx = &index.idx
    cdef Py_ssize_t n, k, m = 0
    cdef int64_t j, pack_total = 0, pack_at = 0, pack_count = 0
    cdef int64_t *js
    cdef fc_entry *e
    cdef fc_io_item *items
    cdef fc_status st
    cdef int rc, d
    cdef cnp.npy_intp dims[FC_MAX_RANK]
    cdef cnp.npy_intp total_dim
    cdef object descr, name, arr, pool = None
    cdef bytes key
    cdef dict out = {} if into is None else into
    cdef list found = []
    cdef cnp.ndarray target
    cdef char *pool_data = NULL
    if idx.header.endianness != 0:
        return None
    n = len(names) if names is not None else <Py_ssize_t>idx.n
    items = <fc_io_item *>calloc(n if n else 1, sizeof(fc_io_item))
    js = <int64_t *>malloc((n if n else 1) * sizeof(int64_t))
    if items == NULL or js == NULL:
        free(items)
        free(js)
        raise MemoryError()
    try:
        for k in range(n):  # pass 1: find and check every entry, size the shared allocation
            if names is not None:
                name = names[k]
                if type(name) is not str:
                    return None
                try:
                    key = PyUnicode_AsUTF8String(name)
                except UnicodeEncodeError:
                    return None
                if len(key) == 0 or PyBytes_AS_STRING(key)[0] == 0:
                    return None
                j = fc_index_find(idx, <const uint8_t *>PyBytes_AS_STRING(key), len(key))
                if j < 0:
                    return None
            else:
                j = k
                e = &idx.entries[j]
                if e.key_len == 0 or idx.keys[e.key_off] == 0:
                    continue  # slice entries are not tensors of their own
                name = PyUnicode_DecodeUTF8(<const char *>idx.keys + e.key_off, e.key_len, "surrogateescape")
            e = &idx.entries[j]
            if not _fast_entry_ok(e, descrs, fds, sizes, verify):
                return None
            if into is None and e.size <= PACK_MAX_BYTES:
                pack_total += (e.size + _PACK_ALIGN - 1) // _PACK_ALIGN * _PACK_ALIGN
                pack_count += 1
            js[m] = j
            found.append(name)
            m += 1
        if pack_total and pack_count > 1:  # one tensor alone gets an array of its own
            total_dim = <cnp.npy_intp>(pack_total + _PACK_ALIGN)
            pool = cnp.PyArray_SimpleNew(1, &total_dim, cnp.NPY_UINT8)
            pool_data = <char *>cnp.PyArray_DATA(<cnp.ndarray>pool)
            pool_data += (_PACK_ALIGN - <int64_t>(<size_t>pool_data % <size_t>_PACK_ALIGN)) % _PACK_ALIGN
        for k in range(m):  # pass 2: the arrays and the reads
            e = &idx.entries[js[k]]
            name = found[k]
            descr = descrs[e.dtype]
            for d in range(e.rank):
                dims[d] = <cnp.npy_intp>idx.dims[e.dims_off + d]
            if into is not None:
                arr = into.get(name)
                if arr is None or not cnp.PyArray_CheckExact(arr):
                    return None
                target = <cnp.ndarray>arr
                if (not cnp.PyArray_IS_C_CONTIGUOUS(target) or not cnp.PyArray_ISWRITEABLE(target)
                        or cnp.PyArray_NDIM(target) != e.rank
                        or not cnp.PyArray_EquivTypes(<cnp.dtype>cnp.PyArray_DESCR(target), <cnp.dtype>descr)
                        or (<object>cnp.PyArray_DESCR(target)).byteorder == ">"):
                    return None
                for d in range(e.rank):
                    if cnp.PyArray_DIMS(target)[d] != dims[d]:
                        return None
            elif pool is not None and e.size <= PACK_MAX_BYTES:
                Py_INCREF(descr)  # PyArray_NewFromDescr steals a reference
                arr = PyArray_NewFromDescr(&PyArray_Type, <cnp.dtype>descr, e.rank, dims, NULL,
                                           pool_data + pack_at, cnp.NPY_ARRAY_CARRAY, None)
                cnp.set_array_base(<cnp.ndarray>arr, pool)
                pack_at += (e.size + _PACK_ALIGN - 1) // _PACK_ALIGN * _PACK_ALIGN
            else:
                Py_INCREF(descr)  # PyArray_Empty steals a reference
                arr = PyArray_Empty(e.rank, dims, <cnp.dtype>descr, 0)
            items[k].fd = fds[e.shard_id]
            items[k].file_off = <uint64_t>e.offset
            items[k].len = <uint64_t>e.size
            items[k].buf = cnp.PyArray_DATA(<cnp.ndarray>arr)
            items[k].crc = fc_crc_unmask(e.crc32c)
            items[k].verify = verify
            if into is None:
                out[name] = arr
        fc_status_clear(&st)
        with nogil:
            rc = fc_io_run(items, <size_t>m, FC_IO_READ, threads, 0, &st)
        if rc:
            _raise(&st, "", lambda i: describe(found[i], idx.entries[js[i]].shard_id))
        return out
    finally:
        free(items)
        free(js)
