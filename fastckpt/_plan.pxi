# The write plan (included by _core.pyx).

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
    cdef public list extra  # index entries written by no payload of this plan: (key, tensor number | entry bytes)

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

    def __len__(self):
        return self.n

    def size(self, Py_ssize_t i):
        """The payload size of tensor ``i`` in bytes (as planned)."""
        self._check(i)
        return self.items[i].len

    def is_ready(self, Py_ssize_t i):
        """True if tensor ``i``'s payload is in memory as it is written (not
        a staged source that must be converted first)."""
        self._check(i)
        return bool(self.ready[i])

    def payload(self, Py_ssize_t i):
        """Tensor ``i``'s payload as a read-only 1-D uint8 array over its
        own memory (no copy; the array keeps the plan, and so the source,
        alive). Only for ready tensors."""
        cdef cnp.npy_intp dim
        cdef cnp.ndarray arr
        self._check(i)
        if not self.ready[i]:
            raise InvalidArgumentError(f"tensor {self.names[i]!r} has no payload in memory (it is staged)")
        dim = <cnp.npy_intp>self.items[i].len
        if dim == 0:
            return cnp.PyArray_ZEROS(1, &dim, cnp.NPY_UINT8, 0)
        arr = cnp.PyArray_SimpleNewFromData(1, &dim, cnp.NPY_UINT8, <void *>self.items[i].buf)
        Py_INCREF(self)
        cnp.PyArray_SetBaseObject(arr, self)
        cnp.PyArray_CLEARFLAGS(arr, cnp.NPY_ARRAY_WRITEABLE)
        return arr

    cdef int _check(self, Py_ssize_t i) except -1:
        if i < 0 or i >= self.n:
            raise IndexError(f"tensor number {i} is not in the plan ({self.n} tensors)")
        return 0

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

    def at_least(self, uint64_t n):
        """Numbers of the tensors whose payload is in memory as written (not
        staged, not an encoded string) and at least ``n`` bytes."""
        cdef Py_ssize_t i
        return [i for i in range(self.n) if self.ready[i] and not self.preset[i] and self.items[i].len >= n]

    def crc(self, Py_ssize_t i):
        """Tensor ``i``'s entry checksum, masked as the index stores it (after
        its payload is written)."""
        self._check(i)
        return fc_crc_mask(self.preset_crc[i] if self.preset[i] else self.items[i].crc)

    def described(self, Py_ssize_t i):
        """``(dtype enum, shape, checksum set by the caller)`` of tensor ``i``
        (the checksum of a string tensor's entry is not its payload's)."""
        cdef int32_t d
        self._check(i)
        shape = tuple([self.dims[self.dims_off[i] + d] for d in range(self.entries[i].rank)])
        return self.entries[i].dtype, shape, bool(self.preset[i])

    def set_ready(self, Py_ssize_t i, payload):
        """Give staged tensor ``i`` its payload (a C-contiguous little-endian
        copy of its source), for a write that needs every payload ready."""
        cdef _Buffer hold = _Buffer(payload)
        if <uint64_t>hold.view.len != self.items[i].len:
            raise InvalidArgumentError(f"tensor {self.names[i]!r}: payload of {hold.view.len} bytes, "
                                       f"planned {self.items[i].len}")
        self.held.append(hold)
        self.items[i].buf = hold.view.buf
        self.ready[i] = 1

    def write_compressed(self, list fds, int level, uint64_t chunk, int threads, list paths):
        """Compress every payload (byte planes + zstd, in ``chunk``-byte
        chunks, on ``threads`` threads with the GIL released) straight into
        ``fds[shard]``, appending from offset 0; strings are written as they
        are. Sets each entry's offset, size and CRC (of the raw bytes)."""
        cdef fc_zwrite_item *w = <fc_zwrite_item *>calloc(self.n if self.n else 1, sizeof(fc_zwrite_item))
        cdef Py_ssize_t i
        cdef fc_status st
        cdef int rc, nshards = len(fds)
        if w == NULL:
            raise MemoryError()
        try:
            for i in range(self.n):
                if not self.ready[i]:
                    raise InvalidArgumentError(f"tensor {self.names[i]!r} has no payload yet")
                w[i].src = <const uint8_t *>self.items[i].buf
                w[i].len = self.items[i].len
                w[i].shard = self.entries[i].shard_id
                w[i].fd = fds[self.entries[i].shard_id]
                w[i].stored_as_is = self.entries[i].dtype == 7  # DT_STRING: TensorFlow's own layout
                w[i].itemsize = 1 if w[i].stored_as_is else fc_dtype_size(self.entries[i].dtype)
            fc_status_clear(&st)
            with nogil:
                rc = fc_zwrite_run(w, <size_t>self.n, nshards, level, chunk, threads, &st)
            if rc:
                _raise(&st, "", lambda k: f"tensor {self.names[k]!r} in {paths[self.entries[k].shard_id]}")
            for i in range(self.n):
                self.entries[i].offset = <int64_t>w[i].offset
                self.entries[i].size = <int64_t>w[i].size
                if not w[i].stored_as_is:
                    self.items[i].crc = w[i].crc
            self.shard_sizes = [0] * nshards
            for i in range(self.n):
                end = w[i].offset + w[i].size
                if end > self.shard_sizes[w[i].shard]:
                    self.shard_sizes[w[i].shard] = end
        finally:
            free(w)

    def shared_payloads(self):
        """``(i, j)`` for every tensor ``i`` whose payload is the very memory of
        an earlier tensor ``j``'s (the same address, byte count, dtype and
        shape: tied weights, one array under two names). Memory that only
        overlaps (a slice, a reshaped or re-typed view) is not shared: each
        such tensor is written as its own copy."""
        cdef _span_t *sp = <_span_t *>malloc((self.n if self.n else 1) * sizeof(_span_t))
        cdef Py_ssize_t i, k, j, m = 0, run = 0
        cdef list pairs = []
        if sp == NULL:
            raise MemoryError()
        try:
            for i in range(self.n):
                if self.ready[i] and not self.preset[i] and self.items[i].len:  # (strings are encoded anew)
                    sp[m].ptr, sp[m].len, sp[m].i, sp[m].canonical = <uintptr_t>self.items[i].buf, self.items[i].len, i, -1
                    m += 1
            qsort(sp, <size_t>m, sizeof(_span_t), _span_less)
            for k in range(1, m):
                if sp[k].ptr != sp[run].ptr:
                    run = k
                    continue
                for j in range(run, k):
                    if sp[j].canonical < 0 and sp[j].len == sp[k].len and self._same_shape(sp[j].i, sp[k].i):
                        sp[k].canonical = sp[j].i
                        pairs.append((sp[k].i, sp[j].i))
                        break
        finally:
            free(sp)
        return pairs

    cdef bint _same_shape(self, Py_ssize_t a, Py_ssize_t b):
        cdef int32_t d
        if self.entries[a].dtype != self.entries[b].dtype or self.entries[a].rank != self.entries[b].rank:
            return False
        for d in range(self.entries[a].rank):
            if self.dims[self.dims_off[a] + d] != self.dims[self.dims_off[b] + d]:
                return False
        return True

    def key(self, Py_ssize_t i):
        """The key (bytes) of tensor ``i``."""
        self._check(i)
        return PyBytes_FromStringAndSize(<const char *>self.keys.p + self.key_off[i], self.key_len[i])

    def records(self, int shard_id):
        """``(key, serialized entry)`` of every tensor, its data file numbered
        ``shard_id`` (-1: each its planned one), after every payload is
        written, and of every :attr:`extra` entry (a tensor number stands for
        that tensor's entry under another key: tied weights): one process's
        part of an index that several processes' records make up."""
        cdef fc_buf out
        cdef fc_status st
        cdef Py_ssize_t i
        cdef list res = []
        memset(&out, 0, sizeof(out))
        fc_status_clear(&st)
        try:
            for i in range(self.n):
                self.entries[i].dims = self.dims + self.dims_off[i]
                self.entries[i].crc32c = fc_crc_mask(self.preset_crc[i] if self.preset[i] else self.items[i].crc)
                self.entries[i].has_crc = 1
                if shard_id >= 0:
                    self.entries[i].shard_id = shard_id
                out.len = 0
                if fc_encode_entry(&out, &self.entries[i], &st):
                    _raise(&st, f"the entry of tensor {self.names[i]!r}")
                res.append((PyBytes_FromStringAndSize(<const char *>self.keys.p + self.key_off[i], self.key_len[i]),
                            PyBytes_FromStringAndSize(<const char *>out.p, out.len)))
        finally:
            fc_buf_free(&out)
        for key, ref in self.extra or ():
            res.append((key, res[ref][1] if isinstance(ref, int) else ref))
        return res

    def index(self, int num_shards, int min_consumer=0):
        """The .index bytes (after every payload is written); a bundle of
        compressed payloads has ``min_consumer=ZSTD_MIN_CONSUMER``."""
        cdef fc_header h
        cdef Py_ssize_t i
        if self.extra:
            return records_index(self.records(-1), num_shards, min_consumer)
        for i in range(self.n):
            self.entries[i].dims = self.dims + self.dims_off[i]  # the arena no longer moves
            self.entries[i].crc32c = fc_crc_mask(self.preset_crc[i] if self.preset[i] else self.items[i].crc)
            self.entries[i].has_crc = 1
        h.num_shards, h.endianness, h.producer = num_shards, 0, 1
        h.min_consumer, h.bad_consumer_1, h.has_version = min_consumer, 0, 1
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
    p.names, p.held, p.staged, p.extra = [], [], [], []
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
