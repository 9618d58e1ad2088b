# The C core's API (csrc/fastckpt.h), declared once for the bridge.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t
cimport numpy as cnp

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL

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
    int fc_guarded_copy(void *dst, const void *src, size_t n)
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
    enum:
        FC_ZSTD_MIN_CONSUMER, FC_ZFRAME_HEADER, FC_ZCHUNK_MAX
    ctypedef struct fc_zframe:
        uint32_t chunk_raw
        uint32_t n_chunks
        uint64_t table_end
        const uint8_t *table
    int fc_zframe_parse(const uint8_t *p, uint64_t avail, uint64_t frame_len, uint64_t raw_len, int32_t itemsize,
                        fc_zframe *f, fc_status *st)
    uint64_t fc_zchunk_raw_len(const fc_zframe *f, uint64_t raw_len, uint32_t c)
    int fc_zchunk_decode(const uint8_t *src, uint32_t stored, uint8_t *dst, uint64_t dst_len, int32_t itemsize,
                         void *dctx, uint8_t *scratch, fc_status *st)
    int fc_zdecompress_chunks(const uint8_t *src, uint64_t src_len, const uint8_t *words, uint32_t n,
                              uint64_t chunk_raw, uint64_t raw_len, int32_t itemsize, uint8_t *dst, int nthreads,
                              uint32_t *crc, fc_status *st)
    int fc_zdecompress(const uint8_t *frame, uint64_t frame_len, uint8_t *dst, uint64_t raw_len, int32_t itemsize,
                       int nthreads, uint32_t *crc, fc_status *st)
    ctypedef struct fc_zwrite_item:
        const uint8_t *src
        uint64_t len
        int32_t itemsize
        int32_t shard
        int fd
        int stored_as_is
        uint64_t offset
        uint64_t size
        uint32_t crc
    int fc_zwrite_run(fc_zwrite_item *items, size_t n, int nshards, int level, uint64_t chunk, int nthreads,
                      fc_status *st)
    int fc_dtype_size(int32_t dtype)
    void *fc_zdctx_new(fc_status *st)
    void fc_zdctx_free(void *dctx)
    unsigned fc_zstd_version()
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
        uint64_t digest
    enum:
        FC_IO_READ, FC_IO_WRITE, FC_IO_WRITE_UNCACHED, FC_IO_HASH
    uint64_t fc_xxh64(const void *data, size_t len, uint64_t seed)
    int fc_cow_map(int fd, uint64_t offset, uint64_t len, void **addr, int *slot)
    void fc_cow_unmap(int slot)
    int fc_cow_copied(int slot)
    int fc_cow_copies()
    int fc_io_run(fc_io_item *items, size_t n, int mode, int nthreads,
                  uint64_t piece_bytes, fc_status *st)
    ctypedef struct fc_io_async:
        int started
    void fc_io_start(fc_io_async *a, fc_io_item *items, size_t n, int mode, int nthreads, uint64_t piece)
    int fc_io_wait(fc_io_async *a, fc_status *st)


