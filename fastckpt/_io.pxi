# Parallel positional I/O and the read planner (included by _core.pyx).

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



def digests(list buffers, int threads=1):
    """The digest of every buffer, on up to ``threads`` threads with the GIL
    released: up to 1 MiB, its XXH64 (seed 0); longer, the XXH64 (seeded
    with the length) of the little-endian XXH64s of its 1 MiB pieces."""
    cdef size_t n = len(buffers), i
    cdef fc_io_item *items = <fc_io_item *>calloc((n if n else 1), sizeof(fc_io_item))
    cdef fc_status st
    cdef int rc
    cdef uint64_t at = 0
    cdef _Buffer hold
    if items == NULL:
        raise MemoryError()
    held = []
    fc_status_clear(&st)
    try:
        for i in range(n):
            hold = _Buffer(buffers[i])
            held.append(hold)
            items[i].file_off = at  # (consecutive: small ones share a batch)
            items[i].len = <uint64_t>hold.view.len
            items[i].buf = hold.view.buf
            at += items[i].len
        with nogil:
            rc = fc_io_run(items, n, FC_IO_HASH, threads, 0, &st)
        if rc:
            _raise(&st, "", None)
        return [items[i].digest for i in range(n)]
    finally:
        free(items)


def xxh64(data, uint64_t seed=0):
    """XXH64 of a buffer (the C core's, for tests)."""
    cdef _Buffer b = _Buffer(data)
    return fc_xxh64(b.view.buf, <size_t>b.view.len, seed)


PACK_MAX_BYTES = 64 * 1024
import mmap as _mmap
cdef uint64_t _PAGE = _mmap.PAGESIZE


cdef class CowMap:
    """A copy-on-write map of part of a data file under a read lease
    (csrc/cowmap.c): the memory of restored arrays that were not copied.
    It ends (unmapped, the lease released) when the last array on it goes."""
    cdef int slot
    cdef char *addr
    cdef readonly uint64_t start
    cdef readonly uint64_t length

    def __cinit__(self):
        self.slot = -1

    def __dealloc__(self):
        if self.slot >= 0:
            fc_cow_unmap(self.slot)
            self.slot = -1

    @property
    def copied(self) -> bool:
        """True once a writer opening the file made this process copy the
        pages (the arrays no longer depend on the file)."""
        return self.slot >= 0 and fc_cow_copied(self.slot) != 0


cdef CowMap _cow_map(int fd, uint64_t start, uint64_t length):
    cdef void *addr = NULL
    cdef int slot = -1
    cdef int rc
    with nogil:
        rc = fc_cow_map(fd, start, length, &addr, &slot)
    if rc:
        return None
    cdef CowMap m = CowMap.__new__(CowMap)
    m.slot = slot
    m.addr = <char *>addr
    m.start = start
    m.length = length
    return m


def cow_copies():
    """How many copy-on-write maps this process copied because a writer
    opened their file (see csrc/cowmap.c)."""
    return fc_cow_copies()
cdef int64_t _PACK_ALIGN = 64


cdef int64_t _find(fc_index *idx, object name) except -2:
    """Entry number of a tensor name, -1 when it is not a plain str key
    present in the index (the general path explains)."""
    cdef bytes key
    if type(name) is not str:
        return -1
    try:
        key = PyUnicode_AsUTF8String(name)
    except UnicodeEncodeError:
        return -1
    if len(key) == 0 or PyBytes_AS_STRING(key)[0] == 0:
        return -1
    return fc_index_find(idx, <const uint8_t *>PyBytes_AS_STRING(key), len(key))


cdef bint _fits(object arr, fc_entry *e, fc_index *idx, list descrs):
    """True if ``arr`` is an ndarray the C path can fill with entry ``e``:
    C-contiguous, writeable, native byte order, same dtype and shape."""
    cdef cnp.ndarray target
    cdef int d
    if arr is None or not cnp.PyArray_CheckExact(arr):
        return False
    target = <cnp.ndarray>arr
    if (not cnp.PyArray_IS_C_CONTIGUOUS(target) or not cnp.PyArray_ISWRITEABLE(target)
            or cnp.PyArray_NDIM(target) != e.rank
            or not cnp.PyArray_EquivTypes(<cnp.dtype>cnp.PyArray_DESCR(target), <cnp.dtype>descrs[e.dtype])
            or (<object>cnp.PyArray_DESCR(target)).byteorder == ">"):
        return False
    for d in range(e.rank):
        if cnp.PyArray_DIMS(target)[d] != idx.dims[e.dims_off + d]:
            return False
    return True


cdef inline bint _fast_entry_ok(fc_entry *e, const char *dtype_ok, Py_ssize_t ndtypes, const int64_t *shard_sizes,
                                Py_ssize_t nshards, bint verify) noexcept:
    if e.num_slices or e.dtype < 0 or e.dtype >= ndtypes or e.shard_id < 0 or e.shard_id >= nshards:
        return False
    return dtype_ok[e.dtype] and not (verify and not e.has_crc) and e.offset + e.size <= shard_sizes[e.shard_id]


# Reads of at least this many new arrays make them while their bytes are read
# and checked on other threads (fewer: the thread is not worth starting).
cdef Py_ssize_t _ASYNC_MIN_ITEMS = 256


def read_fast(Index index, list names, list fds, list sizes, list descrs, bint verify, int threads,
              describe, dict into=None, before_io=None, dict out=None, int64_t map_min=-1):
    """The read planner: plain tensors are planned and read here, in C.

    Returns ``(out, rest)``: ``out`` (the caller's dict, else a new one, or
    ``into`` itself) maps name -> array, ``rest`` lists the names the caller's general path must read
    (missing, string, sliced, out of range, no checksum, an ``into`` array
    that does not fit); their places in ``out`` are kept with ``None``.
    ``before_io(rest)`` runs before any byte is read, so the general path can
    check its tensors first (an error then leaves ``into`` untouched).
    None for a big-endian bundle (all general). ``names`` None means every
    tensor; ``fds``/``sizes`` per shard; ``descrs[enum]`` a numpy dtype or
    None. New arrays of up to ``PACK_MAX_BYTES`` are views into one
    allocation. With ``map_min >= 0`` new arrays of at least ``map_min``
    bytes are copy-on-write maps of the data file where the file can be
    guarded (:class:`CowMap`): only their CRC is checked, nothing copied."""
    cdef fc_index *idx = &index.idx
    cdef Py_ssize_t n, k, m = 0
    cdef int64_t j, pack_total = 0, pack_at = 0, pack_count = 0
    cdef int64_t *js
    cdef int64_t *slot
    cdef Py_ssize_t nslots = 0, q
    cdef fc_entry *e
    cdef fc_io_item *items
    cdef fc_status st
    cdef int rc, d
    cdef cnp.npy_intp dims[FC_MAX_RANK]
    cdef cnp.npy_intp total_dim
    cdef object descr, name, arr, pool = None
    cdef list found = [], rest = []
    cdef char *pool_data = NULL
    cdef char *mapped = NULL
    cdef list maps = None
    cdef CowMap cmap
    cdef Py_ssize_t nshards = len(fds), ndtypes = len(descrs), t
    cdef int64_t *shard_sizes = NULL
    cdef int *shard_fds = NULL
    cdef char *dtype_ok = NULL
    cdef fc_io_async job
    cdef bint running = False
    cdef dict alone = None, queued = None
    if idx.header.endianness != 0:
        return None
    if len(sizes) != nshards:
        raise ValueError("read_fast: one size per descriptor")
    if out is None:
        out = {} if into is None else into
    n = len(names) if names is not None else <Py_ssize_t>idx.n
    items = <fc_io_item *>calloc(n if n else 1, sizeof(fc_io_item))
    js = <int64_t *>malloc((n if n else 1) * sizeof(int64_t))
    slot = <int64_t *>malloc((n if n else 1) * sizeof(int64_t))  # in order: m >= 0 planned here, -1-r rest[r]
    shard_sizes = <int64_t *>malloc((nshards if nshards else 1) * sizeof(int64_t))
    shard_fds = <int *>malloc((nshards if nshards else 1) * sizeof(int))
    dtype_ok = <char *>malloc(ndtypes if ndtypes else 1)
    if items == NULL or js == NULL or slot == NULL or shard_sizes == NULL or shard_fds == NULL or dtype_ok == NULL:
        free(items)
        free(js)
        free(slot)
        free(shard_sizes)
        free(shard_fds)
        free(dtype_ok)
        raise MemoryError()
    try:
        for t in range(nshards):  # (read once: a Python comparison per entry would cost more than the rest)
            shard_sizes[t] = sizes[t]
            shard_fds[t] = fds[t]
        for t in range(ndtypes):
            dtype_ok[t] = descrs[t] is not None
        for k in range(n):  # pass 1: find and check every entry, size the shared allocation
            if names is not None:
                name = names[k]
                j = _find(idx, name)
            else:
                j = k
                e = &idx.entries[j]
                if e.key_len == 0 or idx.keys[e.key_off] == 0:
                    continue  # slice entries are not tensors of their own
                name = PyUnicode_DecodeUTF8(<const char *>idx.keys + e.key_off, e.key_len, "surrogateescape")
            if j < 0 or not _fast_entry_ok(&idx.entries[j], dtype_ok, ndtypes, shard_sizes, nshards, verify) or (
                    into is not None and not _fits(into.get(name), &idx.entries[j], idx, descrs)):
                slot[nslots] = -1 - <int64_t>len(rest)
                nslots += 1
                rest.append(name)
                continue
            js[m] = j
            slot[nslots] = m
            nslots += 1
            found.append(name)
            m += 1
        mapped = <char *>calloc(m if m else 1, 1)
        if mapped == NULL:
            raise MemoryError()
        if into is None and map_min >= 0 and m and nshards:
            maps = _plan_maps(idx, js, m, fds, descrs, map_min, mapped)
        for k in range(m):  # the small new arrays that are not maps share one allocation
            e = &idx.entries[js[k]]
            if into is None and not mapped[k] and e.size <= PACK_MAX_BYTES:
                pack_total += (e.size + _PACK_ALIGN - 1) // _PACK_ALIGN * _PACK_ALIGN
                pack_count += 1
        if pack_total and pack_count > 1:  # one tensor alone gets an array of its own
            total_dim = <cnp.npy_intp>(pack_total + _PACK_ALIGN)
            pool = cnp.PyArray_SimpleNew(1, &total_dim, cnp.NPY_UINT8)
            pool_data = <char *>cnp.PyArray_DATA(<cnp.ndarray>pool)
            pool_data += (_PACK_ALIGN - <int64_t>(<size_t>pool_data % <size_t>_PACK_ALIGN)) % _PACK_ALIGN
        for k in range(m):  # pass 2: where each tensor's bytes go (new arrays only where no address exists yet)
            e = &idx.entries[js[k]]
            items[k].fd = shard_fds[e.shard_id]
            items[k].file_off = <uint64_t>e.offset
            items[k].len = <uint64_t>e.size
            items[k].crc = fc_crc_unmask(e.crc32c)
            items[k].verify = verify
            if into is not None:
                items[k].buf = cnp.PyArray_DATA(<cnp.ndarray>into[found[k]])  # checked by _fits
            elif mapped[k]:
                cmap = <CowMap>maps[e.shard_id]
                items[k].buf = cmap.addr + (<uint64_t>e.offset - cmap.start)
                items[k].fd = -1  # in memory already: checked, not read
            elif pool is not None and e.size <= PACK_MAX_BYTES:
                items[k].buf = pool_data + pack_at
                pack_at += (e.size + _PACK_ALIGN - 1) // _PACK_ALIGN * _PACK_ALIGN
            else:
                if alone is None:
                    alone = {}
                descr = descrs[e.dtype]
                for d in range(e.rank):
                    dims[d] = <cnp.npy_intp>idx.dims[e.dims_off + d]
                Py_INCREF(descr)  # PyArray_Empty steals a reference
                arr = PyArray_Empty(e.rank, dims, <cnp.dtype>descr, 0)
                alone[k] = arr
                items[k].buf = cnp.PyArray_DATA(<cnp.ndarray>arr)
        if rest and before_io is not None:
            before_io(rest)
            if into is None:  # what it queued moves to its place in the requested order (pass 3)
                for name in rest:
                    name = name.decode("utf-8", "surrogateescape") if type(name) is bytes else name
                    if name in out:
                        if queued is None:
                            queued = {}
                        queued[name] = out.pop(name)
        fc_status_clear(&st)
        rc = 0
        if into is None and m >= _ASYNC_MIN_ITEMS:
            # the reads and checks run on their own threads while this one makes the arrays (pass 3)
            fc_io_start(&job, items, <size_t>m, FC_IO_READ, threads, 0)
            running = True
        else:
            with nogil:
                rc = fc_io_run(items, <size_t>m, FC_IO_READ, threads, 0, &st)
        for q in range(nslots if into is None else 0):  # pass 3, in the requested order: the arrays
            if slot[q] < 0:  # keeps its place for the general path, which keys by text
                name = rest[-1 - slot[q]]
                name = name.decode("utf-8", "surrogateescape") if type(name) is bytes else name
                out[name] = queued.get(name) if queued is not None else None
                continue
            k = <Py_ssize_t>slot[q]
            if alone is not None and k in alone:
                out[found[k]] = alone[k]
                continue
            e = &idx.entries[js[k]]
            descr = descrs[e.dtype]
            for d in range(e.rank):
                dims[d] = <cnp.npy_intp>idx.dims[e.dims_off + d]
            Py_INCREF(descr)  # PyArray_NewFromDescr steals a reference
            arr = PyArray_NewFromDescr(&PyArray_Type, <cnp.dtype>descr, e.rank, dims, NULL, items[k].buf,
                                       cnp.NPY_ARRAY_CARRAY, None)
            cnp.set_array_base(<cnp.ndarray>arr, maps[e.shard_id] if mapped[k] else pool)
            out[found[k]] = arr
        if running:
            with nogil:
                rc = fc_io_wait(&job, &st)
            running = False
        if rc:
            _raise(&st, "", lambda i: describe(found[i], idx.entries[js[i]].shard_id))
        return out, rest
    finally:
        if running:  # (an error making the arrays) the threads still use the items
            with nogil:
                fc_io_wait(&job, &st)
        free(items)
        free(js)
        free(slot)
        free(mapped)
        free(shard_sizes)
        free(shard_fds)
        free(dtype_ok)


# A lease break must move a map into the process's own memory within the
# kernel's lease-break time (45 s by default): moving 1 GiB took 0.2-2.9 s
# on the CI machine (busy minutes included), so 4 GiB about 12 s at worst.
COW_MAX_BYTES = 4 << 30


cdef list _plan_maps(fc_index *idx, int64_t *js, Py_ssize_t m, list fds, list descrs, int64_t map_min,
                     char *mapped):
    """Marks in ``mapped`` the entries read as copy-on-write maps: aligned
    for their dtype, at least ``map_min`` bytes, in a file whose span of such
    entries is at most ``COW_MAX_BYTES`` and mostly theirs (a lease break
    copies the whole span) and which
    can be guarded. Returns the maps per shard (None where none)."""
    cdef Py_ssize_t nshards = len(fds), k, sh
    cdef int64_t *lo = <int64_t *>malloc(nshards * sizeof(int64_t))
    cdef int64_t *hi = <int64_t *>malloc(nshards * sizeof(int64_t))
    cdef int64_t *used = <int64_t *>malloc(nshards * sizeof(int64_t))
    cdef fc_entry *e
    cdef uint64_t start
    cdef list maps = [None] * nshards
    cdef Py_ssize_t ndt = len(descrs), t
    cdef int64_t *align = <int64_t *>malloc((ndt if ndt else 1) * sizeof(int64_t))
    if align == NULL:
        raise MemoryError()
    for t in range(ndt):  # (read once: an attribute per entry would cost more than the rest)
        align[t] = (<cnp.dtype>descrs[t]).alignment if descrs[t] is not None else 0
    if lo == NULL or hi == NULL or used == NULL:
        free(align)
        free(lo)
        free(hi)
        free(used)
        raise MemoryError()
    try:
        for sh in range(nshards):
            lo[sh] = INT64_MAX
            hi[sh] = 0
            used[sh] = 0
        for k in range(m):
            e = &idx.entries[js[k]]
            if e.size <= 0 or e.size < map_min or align[e.dtype] <= 0 or e.offset % align[e.dtype]:
                continue
            mapped[k] = 1
            sh = e.shard_id
            lo[sh] = min(lo[sh], e.offset)
            hi[sh] = max(hi[sh], e.offset + e.size)
            used[sh] += e.size
        for sh in range(nshards):
            if hi[sh] == 0 or used[sh] * 2 < hi[sh] - lo[sh] or hi[sh] - lo[sh] > COW_MAX_BYTES:
                continue
            start = <uint64_t>lo[sh] - <uint64_t>lo[sh] % _PAGE
            maps[sh] = _cow_map(fds[sh], start, <uint64_t>hi[sh] - start)
        for k in range(m):
            if mapped[k] and maps[idx.entries[js[k]].shard_id] is None:
                mapped[k] = 0
        return maps
    finally:
        free(lo)
        free(hi)
        free(used)
        free(align)



def guarded_copy(src, dst, str what=""):
    """Copy the bytes of buffer ``src`` into buffer ``dst`` (as long): a
    page of ``src`` that vanished meanwhile (it maps a file that was
    truncated) is :class:`DataLossError` naming ``what``, never SIGBUS."""
    cdef _Buffer s = _Buffer(src)
    cdef _Buffer d = _Buffer(dst, True)
    cdef int r
    if s.view.len != d.view.len:
        raise InvalidArgumentError(f"guarded_copy: {s.view.len} bytes into a buffer of {d.view.len}")
    with nogil:
        r = fc_guarded_copy(d.view.buf, s.view.buf, <size_t>s.view.len)
    if r:
        raise DataLossError(f"{what or 'a mapped source'}: its file was truncated while it was read")
