/* fastckpt C core: public interface.
 *
 * No Python here. Buffers in as (pointer, length), an int status out; on
 * failure a fc_status carries a code, the errno (if any), the index of the
 * failing item (if any) and a message. fastckpt/_core.pyx is the only caller.
 */
#ifndef FASTCKPT_H
#define FASTCKPT_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#include "bytes.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status ------------------------------------------------------------ */
enum fc_code {
    FC_OK = 0,
    FC_INVALID = 1,     /* bad argument from the caller */
    FC_DATA_LOSS = 2,   /* corrupt, truncated or inconsistent file content */
    FC_IO = 3,          /* a system call failed; err_no says which errno */
    FC_NOMEM = 4,
    FC_UNSUPPORTED = 5, /* valid but not supported (e.g. snappy blocks) */
};

typedef struct {
    int code;
    int err_no;
    int64_t item;       /* index of the failing item, or -1 */
    char msg[320];
} fc_status;

void fc_status_clear(fc_status *st);
int fc_fail(fc_status *st, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ---- TensorFlow's DataType enum (types.proto) ------------------------- */
enum fc_dtype {
    FC_DT_FLOAT = 1, FC_DT_DOUBLE = 2, FC_DT_INT32 = 3, FC_DT_UINT8 = 4, FC_DT_INT16 = 5,
    FC_DT_INT8 = 6, FC_DT_STRING = 7, FC_DT_COMPLEX64 = 8, FC_DT_INT64 = 9, FC_DT_BOOL = 10,
    FC_DT_QINT8 = 11, FC_DT_QUINT8 = 12, FC_DT_QINT32 = 13, FC_DT_BFLOAT16 = 14,
    FC_DT_QINT16 = 15, FC_DT_QUINT16 = 16, FC_DT_UINT16 = 17, FC_DT_COMPLEX128 = 18,
    FC_DT_HALF = 19, FC_DT_RESOURCE = 20, FC_DT_VARIANT = 21, FC_DT_UINT32 = 22,
    FC_DT_UINT64 = 23, FC_DT_FLOAT8_E5M2 = 24, FC_DT_FLOAT8_E4M3FN = 25,
    FC_DT_FLOAT8_E4M3FNUZ = 26, FC_DT_FLOAT8_E4M3B11FNUZ = 27, FC_DT_FLOAT8_E5M2FNUZ = 28,
    FC_DT_INT4 = 29, FC_DT_UINT4 = 30, FC_DT_INT2 = 31, FC_DT_UINT2 = 32, FC_DT_FLOAT4_E2M1FN = 33,
};

/* ---- growable byte buffer ---------------------------------------------- */
typedef struct {
    uint8_t *p;
    size_t len;
    size_t cap;
} fc_buf;

int fc_buf_reserve(fc_buf *b, size_t extra);
int fc_buf_append(fc_buf *b, const void *data, size_t n);
void fc_buf_free(fc_buf *b);
/* Grows *arr (of *cap elements of elem bytes) to hold need elements. */
int fc_grow(void **arr, size_t *cap, size_t need, size_t elem);

/* ---- CRC32C ------------------------------------------------------------ */
/* guard.c: run fn(arg), reading memory that may map a file someone
 * truncates; -1 if a page of it vanished (SIGBUS), 0 otherwise. */
int fc_guarded(void (*fn)(void *), void *arg);
int fc_guarded_copy(void *dst, const void *src, size_t n);

uint32_t fc_crc32c_extend(uint32_t crc, const void *data, size_t n);
uint32_t fc_crc32c_extend_portable(uint32_t crc, const void *data, size_t n);
/* CRC of A||B from crc(A), crc(B) and len(B). */
uint32_t fc_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);
int fc_crc32c_hw_available(void);
static inline uint32_t fc_crc_mask(uint32_t c) {
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}
static inline uint32_t fc_crc_unmask(uint32_t m) {
    uint32_t r = m - 0xa282ead8u;
    return (r >> 17) | (r << 15);
}

/* ---- varint ------------------------------------------------------------ */
#define FC_MAX_VARINT64 10
size_t fc_varint_len(uint64_t v);
/* Writes v at out (room for 10 bytes); returns the byte count. */
size_t fc_put_varint(uint8_t *out, uint64_t v);
/* Decodes one varint from [*p, end); advances *p. 0 on success, -1 on
 * truncated or over-long input. */
int fc_get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v);

/* ---- protobuf messages of the bundle format ----------------------------- */
#define FC_MAX_RANK 64

typedef struct {
    int64_t start;
    int64_t length;     /* -1: the whole dimension (an empty Extent) */
} fc_extent;

typedef struct {
    int32_t dtype;
    int32_t rank;
    const int64_t *dims;
    int32_t shard_id;
    int64_t offset;
    int64_t size;
    uint32_t crc32c;    /* masked, as stored */
    int has_crc;
    int32_t num_slices;
    const fc_extent *extents;  /* num_slices * rank extents, slice-major */
} fc_entry_view;

typedef struct {
    int32_t num_shards;
    int32_t endianness;     /* 0 little, 1 big */
    int32_t producer;
    int32_t min_consumer;
    int32_t has_version;
    int32_t bad_consumer_1; /* 1 when bad_consumers lists version 1 */
} fc_header;

int fc_encode_header(fc_buf *out, const fc_header *h, fc_status *st);
int fc_decode_header(const uint8_t *p, size_t n, fc_header *h, fc_status *st);
int fc_encode_entry(fc_buf *out, const fc_entry_view *e, fc_status *st);

/* ---- SSTable (the .index file) ------------------------------------------- */
#define FC_TABLE_BLOCK_SIZE 262144
#define FC_TABLE_FOOTER_LEN 48

typedef struct fc_table_builder fc_table_builder;
fc_table_builder *fc_table_builder_new(void);
void fc_table_builder_free(fc_table_builder *tb);
/* Keys must be strictly increasing (bytewise). */
int fc_table_add(fc_table_builder *tb, const uint8_t *key, size_t klen,
                 const uint8_t *val, size_t vlen, fc_status *st);
/* Finishes the table; *out then points at the whole file (owned by tb). */
int fc_table_finish(fc_table_builder *tb, const uint8_t **out, size_t *len,
                    fc_status *st);

typedef int (*fc_table_visit)(void *ctx, const uint8_t *key, size_t klen,
                              const uint8_t *val, size_t vlen, fc_status *st);
/* Walks every entry of every data block, in order, checking block CRCs and
 * that keys strictly increase. */
int fc_table_iterate(const uint8_t *data, size_t len, fc_table_visit visit,
                     void *ctx, fc_status *st);

/* Sorts n keys (arena + off/len) bytewise into order[]; stable. 0 or -1 (ENOMEM). */
int fc_sort_keys(const uint8_t *arena, const uint32_t *off, const uint32_t *len, size_t n,
                 uint32_t *order);
/* Stable merge sort of order[0..n) by less(ctx, a, b); thread-safe (no
 * globals). 0, or -1 when out of memory. */
int fc_sort_indices(size_t *order, size_t n, int (*less)(const void *ctx, size_t a, size_t b),
                    const void *ctx);

/* ---- the write plan (plan.c) ------------------------------------------------ */
/* Shard and offset of each of n payloads of the given sizes: contiguous runs
 * of about equal bytes per shard, each payload padded to `alignment`;
 * shard_ends[num_shards] receives each data file's size. */
int fc_plan_layout(const uint64_t *sizes, size_t n, int32_t num_shards, uint64_t alignment,
                   int32_t *shards, uint64_t *offsets, uint64_t *shard_ends, fc_status *st);
/* The .index of n written entries (keys in an arena, any order): sorted,
 * checked for duplicate names (*duplicate: the second one's position),
 * built in tb; *out then points at the whole file (owned by tb). */
int fc_index_build(const fc_header *h, const uint8_t *keys, const uint32_t *key_off,
                   const uint32_t *key_len, const fc_entry_view *entries, size_t n,
                   fc_table_builder *tb, const uint8_t **out, size_t *out_len, int64_t *duplicate,
                   fc_status *st);

/* ---- parsed bundle index -------------------------------------------------- */
typedef struct {
    uint32_t key_off, key_len;
    int32_t dtype;
    int32_t rank;
    uint32_t dims_off;
    int32_t shard_id;
    int64_t offset;
    int64_t size;
    int64_t num_elements;
    uint32_t crc32c;        /* masked, as stored */
    int32_t has_crc;
    int32_t num_slices;
    uint32_t extents_off;
} fc_entry;

typedef struct {
    fc_header header;
    int have_header;
    fc_entry *entries;
    size_t n, cap;
    uint8_t *keys;
    size_t keys_len, keys_cap;
    int64_t *dims;
    size_t dims_len, dims_cap;
    fc_extent *extents;
    size_t ext_len, ext_cap;
} fc_index;

/* Parses a whole .index file. The header entry ("" key) must come first.
 * Every entry is checked: non-negative dims, element count without overflow,
 * shard_id < num_shards, non-negative offset/size without overflow, and the
 * exact size of fixed-width dtypes. */
int fc_index_parse(fc_index *idx, const uint8_t *data, size_t len, fc_status *st);
void fc_index_free(fc_index *idx);
/* Decodes one BundleEntryProto into e, appending dims and extents to the
 * index arenas. */
int fc_decode_entry_into(fc_index *idx, const uint8_t *p, size_t n, fc_entry *e,
                         fc_status *st);
/* Binary search; returns the entry index or -1. */
int64_t fc_index_find(const fc_index *idx, const uint8_t *key, size_t klen);
/* Bytes per element of a fixed-width dtype, 0 for variable (string,
 * variant), -1 for an unknown enum value. */
int fc_dtype_size(int32_t dtype);

/* ---- DT_STRING payloads -------------------------------------------------- */
/* Size of the payload for n strings of the given lengths. */
int fc_string_payload_size(const uint64_t *lens, size_t n, uint64_t *size,
                           fc_status *st);
/* Writes the payload into out (exactly fc_string_payload_size bytes) and
 * returns the entry CRC (unmasked) in *crc. */
int fc_string_encode(const uint8_t *const *ptrs, const uint64_t *lens, size_t n,
                     uint8_t *out, uint64_t out_len, uint32_t *crc,
                     fc_status *st);
/* Parses a payload of n strings: fills lens[n] (unless lens is NULL: a
 * check that allocates nothing) and the offset of the first string byte. Checks the length checksum and, when verify, the entry CRC.
 * big_endian: the bundle was written on a big-endian host. */
int fc_string_decode(const uint8_t *payload, uint64_t size, uint64_t n,
                     uint64_t *lens, uint64_t *data_off, uint32_t masked_crc,
                     int verify, int big_endian, fc_status *st);

/* ---- parallel positional I/O ----------------------------------------------- */
typedef struct {
    int fd;
    uint64_t file_off;
    uint64_t len;
    void *buf;
    uint32_t crc;       /* write: out, crc32c of buf. read: expected (unmasked) */
    uint8_t verify;     /* read: compare the CRC */
    /* read: fd < 0 means buf holds the bytes already (a map of the file):
     * only its CRC is checked, no system call */
    uint64_t digest;    /* FC_IO_HASH: out, the digest of buf (below) */
} fc_io_item;

enum fc_io_mode {
    FC_IO_READ = 0,
    FC_IO_WRITE = 1,
    FC_IO_WRITE_UNCACHED = 2, /* RWF_DONTCACHE where the kernel has it: for
                                 data about to be fsync'd, faster than
                                 filling the page cache and flushing it */
    FC_IO_HASH = 3,           /* no system call, no CRC: each item's digest */
};

/* XXH64 of data (xxh64.c). */
uint64_t fc_xxh64(const void *data, size_t len, uint64_t seed);
/* A payload's digest (FC_IO_HASH), computed piece by piece in parallel:
 * up to FC_DIGEST_BLOCK bytes, XXH64(data, 0); longer, XXH64 (seeded with
 * the length) of the little-endian XXH64s of its FC_DIGEST_BLOCK pieces. */
#define FC_DIGEST_BLOCK (1u << 20)

/* Reads or writes every item with pread/pwrite (batched with p*v for
 * neighbouring small items, split into pieces for large ones) on up to
 * nthreads threads, computing each item's CRC32C in the same pass. No
 * Python calls: safe with the GIL released. On failure st->item is the
 * item's index. */
int fc_io_run(fc_io_item *items, size_t n, int mode, int nthreads,
              uint64_t piece_bytes, fc_status *st);

/* fc_io_run on a thread of its own, so the caller can go on (creating the
 * Python objects of a read while its bytes are checked): fc_io_start never
 * fails (without a thread it runs the work before returning); fc_io_wait
 * joins and returns fc_io_run's result (st set on failure). Every started
 * job is waited for exactly once, before its items are freed. */
typedef struct {
    pthread_t tid;
    int started;
    fc_io_item *items;
    size_t n;
    int mode;
    int nthreads;
    uint64_t piece;
    int rc;
    fc_status st;
} fc_io_async;
void fc_io_start(fc_io_async *a, fc_io_item *items, size_t n, int mode, int nthreads, uint64_t piece);
int fc_io_wait(fc_io_async *a, fc_status *st);

/* Copy-on-write maps of data files under a read lease (cowmap.c).
 * fc_cow_map maps `len` bytes of the file open as `fd` from `offset` (a
 * multiple of the page size) privately and writeably: 0 and *addr, *slot on
 * success; 1 when the file cannot be guarded here (the caller copies).
 * fc_cow_unmap ends the map and its lease. fc_cow_copied: whether a lease
 * break made the map's pages private; fc_cow_copies: how many such copies
 * this process made. */
int fc_cow_map(int fd, uint64_t offset, uint64_t len, void **addr, int *slot);
void fc_cow_unmap(int slot);
int fc_cow_copied(int slot);
int fc_cow_copies(void);

/* CRC32C of a large buffer on several threads. */
uint32_t fc_crc32c_parallel(const void *data, uint64_t n, int nthreads);

/* ---- compressed payloads (zframe.c): fastckpt's zstd extension ---------- */
/* A bundle holding compressed payloads says so with this header
 * min_consumer: TensorFlow (consumer version 1) refuses it by name. */
#define FC_ZSTD_MIN_CONSUMER 1001
#define FC_ZFRAME_MAGIC 0x315a4346u /* "FCZ1" */
#define FC_ZFRAME_HEADER 24
#define FC_ZCHUNK_MAX (1u << 30)

typedef struct {
    uint32_t chunk_raw, n_chunks;
    uint64_t table_end;     /* offset of the first chunk */
    const uint8_t *table;   /* the chunk table, or NULL when not in the bytes given */
} fc_zframe;

/* Checks a frame (its first `avail` bytes; the table too when they hold it)
 * against the entry: raw length, element size, chunk geometry, lengths. */
int fc_zframe_parse(const uint8_t *p, uint64_t avail, uint64_t frame_len, uint64_t raw_len, int32_t itemsize,
                    fc_zframe *f, fc_status *st);
uint64_t fc_zchunk_raw_len(const fc_zframe *f, uint64_t raw_len, uint32_t c);
/* Restores one chunk (stored length word `stored`) into dst (dst_len bytes);
 * scratch holds chunk_raw bytes when itemsize > 1. */
int fc_zchunk_decode(const uint8_t *src, uint32_t stored, uint8_t *dst, uint64_t dst_len, int32_t itemsize,
                     void *dctx, uint8_t *scratch, fc_status *st);
/* Restores n consecutive chunks (their stored bytes src, their length
 * words) of raw_len bytes into dst on nthreads threads; *crc = CRC32C of dst. */
int fc_zdecompress_chunks(const uint8_t *src, uint64_t src_len, const uint8_t *words, uint32_t n, uint64_t chunk_raw,
                          uint64_t raw_len, int32_t itemsize, uint8_t *dst, int nthreads, uint32_t *crc,
                          fc_status *st);
/* Restores a whole frame into dst on nthreads threads; *crc = CRC32C of dst. */
int fc_zdecompress(const uint8_t *frame, uint64_t frame_len, uint8_t *dst, uint64_t raw_len, int32_t itemsize,
                   int nthreads, uint32_t *crc, fc_status *st);
/* One payload for fc_zwrite_run: a tensor's raw bytes, compressed into a
 * frame, or (stored_as_is: a string payload) written as they are. */
typedef struct {
    const uint8_t *src;
    uint64_t len;
    int32_t itemsize;
    int32_t shard;          /* index into the cursors: which data file */
    int fd;
    int stored_as_is;
    uint64_t offset;        /* out: where it starts in its data file */
    uint64_t size;          /* out: its stored bytes */
    uint32_t crc;           /* out: CRC32C of the raw bytes (frames only) */
} fc_zwrite_item;
/* Compresses and writes every payload into its data file, appending in
 * item order from offset 0 of each of the nshards files. */
int fc_zwrite_run(fc_zwrite_item *items, size_t n, int nshards, int level, uint64_t chunk, int nthreads,
                  fc_status *st);
void *fc_zdctx_new(fc_status *st);
void fc_zdctx_free(void *dctx);
unsigned fc_zstd_version(void); /* 0 without libzstd */

#ifdef __cplusplus
}
#endif
#endif
