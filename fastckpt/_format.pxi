# The on-disk format: protobuf messages, the SSTable, the index, string payloads
# (included by _core.pyx).

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


def records_index(list records, int num_shards, int min_consumer=0):
    """The .index of ``(key, serialized entry)`` records in any order (a
    duplicate key is an :class:`InvalidArgumentError`)."""
    records.sort(key=_record_key)
    cdef Py_ssize_t i
    for i in range(1, len(records)):
        if records[i][0] == records[i - 1][0]:
            raise InvalidArgumentError(f"duplicate tensor name {records[i][0].decode('utf-8', 'replace')!r}")
    return build_table([(b"", encode_header(num_shards=num_shards, min_consumer=min_consumer))] + records)


def _record_key(record):
    return record[0]


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


cdef struct _span_t:
    uintptr_t ptr  # where a payload's bytes are (each sorted by it, then by tensor number)
    uint64_t len
    Py_ssize_t i
    Py_ssize_t canonical  # the earlier tensor whose very payload this is, or -1


cdef int _span_less(const void *a, const void *b) noexcept nogil:
    cdef const _span_t *x = <const _span_t *>a
    cdef const _span_t *y = <const _span_t *>b
    if x.ptr != y.ptr:
        return -1 if x.ptr < y.ptr else 1
    return -1 if x.i < y.i else (1 if x.i > y.i else 0)


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

    @property
    def compressed(self):
        """True when the payloads are compressed frames (fastckpt's zstd
        extension, marked by the header's min_consumer)."""
        return self.idx.header.min_consumer == FC_ZSTD_MIN_CONSUMER

    def dtype_mask(self):
        """An int with bit ``d`` set for every dtype enum ``d`` < 64 that
        some entry has."""
        cdef size_t i
        cdef uint64_t m = 0
        cdef int32_t d
        for i in range(self.idx.n):
            d = self.idx.entries[i].dtype
            if 0 <= d < 64:
                m |= (<uint64_t>1) << d
        return m

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

    def shared(self):
        """``(i, j)`` for every entry ``i`` that names the very bytes of an
        earlier-sorted entry ``j`` (same data file, offset, size, dtype, shape
        and checksum; size > 0): tied weights, written once."""
        cdef _span_t *sp = NULL
        cdef Py_ssize_t i, k, j, m = 0, run = 0
        cdef fc_entry *e
        cdef list pairs = []
        cdef int64_t last = -1
        for i in range(<Py_ssize_t>self.idx.n):
            e = &self.idx.entries[i]
            if e.size > 0 and e.num_slices == 0 and e.key_len > 0:
                if e.offset <= last:
                    break
                last = e.offset
        else:  # no offset twice (the usual layout, in key order): nothing shared
            return pairs
        sp = <_span_t *>malloc((self.idx.n if self.idx.n else 1) * sizeof(_span_t))
        if sp == NULL:
            raise MemoryError()
        try:
            for i in range(<Py_ssize_t>self.idx.n):
                e = &self.idx.entries[i]
                if e.size > 0 and e.num_slices == 0 and e.key_len > 0:
                    sp[m].ptr = <uintptr_t>e.offset  # the position; the shard is compared below
                    sp[m].len, sp[m].i, sp[m].canonical = <uint64_t>e.size, i, -1
                    m += 1
            qsort(sp, <size_t>m, sizeof(_span_t), _span_less)
            for k in range(1, m):
                if sp[k].ptr != sp[run].ptr:
                    run = k
                    continue
                for j in range(run, k):
                    if sp[j].canonical < 0 and self._same_bytes(sp[j].i, sp[k].i):
                        sp[k].canonical = sp[j].i
                        pairs.append((sp[k].i, sp[j].i))
                        break
        finally:
            free(sp)
        return pairs

    cdef bint _same_bytes(self, Py_ssize_t a, Py_ssize_t b):
        cdef fc_entry *x = &self.idx.entries[a]
        cdef fc_entry *y = &self.idx.entries[b]
        cdef int32_t d
        if (x.shard_id != y.shard_id or x.size != y.size or x.dtype != y.dtype or x.rank != y.rank
                or x.has_crc != y.has_crc or x.crc32c != y.crc32c):
            return False
        for d in range(x.rank):
            if self.idx.dims[x.dims_off + d] != self.idx.dims[y.dims_off + d]:
                return False
        return True

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


