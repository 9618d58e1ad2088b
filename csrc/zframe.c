/* Compressed payloads: fastckpt's zstd extension of the bundle format.
 *
 * A tensor's raw little-endian bytes are cut into chunks of `chunk_raw`
 * bytes (a multiple of the element size); each chunk is split into byte
 * planes (all first bytes of its elements, then all second bytes, ...),
 * which puts a float's sign and exponent bytes side by side, and
 * compressed with zstd on its own, in parallel on worker threads that make
 * no Python calls. A chunk that does not shrink is stored as it is (its
 * original bytes). The payload is one frame:
 *
 *   u32 magic "FCZ1" | u8 codec (1: zstd) | u8 element size | u16 0 |
 *   u64 raw length | u32 chunk_raw | u32 chunk count |
 *   chunk count x u32 stored length (bit 31 set: stored raw) | the chunks
 *
 * all little-endian. Every number is checked against the entry's dtype and
 * shape before use; the CRC32C of the raw bytes is computed as they are
 * restored. zstd is the system's libzstd, loaded at run time (dlopen), so
 * building fastckpt needs no zstd headers and a machine without libzstd
 * refuses compression with FC_UNSUPPORTED instead of failing to import. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "fastckpt.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- libzstd, loaded once --------------------------------------------- */
typedef struct zcctx zcctx;
typedef struct zdctx zdctx;
static struct {
    size_t (*bound)(size_t);
    zcctx *(*create_c)(void);
    size_t (*free_c)(zcctx *);
    size_t (*set_param)(zcctx *, int, int);
    size_t (*compress2)(zcctx *, void *, size_t, const void *, size_t);
    zdctx *(*create_d)(void);
    size_t (*free_d)(zdctx *);
    size_t (*decompress)(zdctx *, void *, size_t, const void *, size_t);
    unsigned (*is_error)(size_t);
    unsigned (*version)(void);
    int ok;
} Z;
static pthread_once_t z_once = PTHREAD_ONCE_INIT;

/* RTLD_DEEPBIND: libzstd's calls to its own functions stay inside it.
 * Without it a zstd that another library exports globally (TensorFlow's
 * libtensorflow_framework has one) takes over half of them, and two zstd
 * versions meet in one context: a crash. AddressSanitizer cannot run
 * DEEPBIND libraries, so sanitized builds go without (and their tests do not
 * load TensorFlow). */
#if defined(RTLD_DEEPBIND) && !defined(__SANITIZE_ADDRESS__)
#define Z_DLOPEN (RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND)
#else
#define Z_DLOPEN (RTLD_NOW | RTLD_LOCAL)
#endif

static void z_load(void) {
    const char *names[] = {"libzstd.so.1", "libzstd.so", "libzstd.1.dylib", "libzstd.dylib"};
    void *h = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !h; i++) h = dlopen(names[i], Z_DLOPEN);
    if (!h) return;
#define LOAD(field, sym) do { *(void **)&Z.field = dlsym(h, sym); if (!Z.field) return; } while (0)
    LOAD(bound, "ZSTD_compressBound");
    LOAD(create_c, "ZSTD_createCCtx");
    LOAD(free_c, "ZSTD_freeCCtx");
    LOAD(set_param, "ZSTD_CCtx_setParameter");
    LOAD(compress2, "ZSTD_compress2");
    LOAD(create_d, "ZSTD_createDCtx");
    LOAD(free_d, "ZSTD_freeDCtx");
    LOAD(decompress, "ZSTD_decompressDCtx");
    LOAD(is_error, "ZSTD_isError");
    LOAD(version, "ZSTD_versionNumber");
#undef LOAD
    Z.ok = Z.version() >= 10400; /* 1.4.0: the one-shot context API used here */
}

static int z_ready(fc_status *st) {
    pthread_once(&z_once, z_load);
    if (!Z.ok) return fc_fail(st, FC_UNSUPPORTED, "zstd compression needs libzstd (1.4 or newer; libzstd.so.1)");
    return FC_OK;
}

unsigned fc_zstd_version(void) {
    pthread_once(&z_once, z_load);
    return Z.ok ? Z.version() : 0;
}

/* ---- threads ------------------------------------------------------------ */
/* Runs fn(arg) on up to nthreads threads (no more than there are jobs): the
 * caller's thread is one of them. Threads are made per call, so fork() in
 * between is harmless. */
static void run_on_threads(void *(*fn)(void *), void *arg, int nthreads, size_t jobs) {
    if (nthreads < 1) nthreads = 1;
    if ((size_t)nthreads > jobs) nthreads = jobs ? (int)(jobs < 1024 ? jobs : 1024) : 1;
    pthread_t *tids = calloc((size_t)nthreads, sizeof(pthread_t));
    int started = 0;
    if (tids)
        for (int t = 1; t < nthreads; t++, started++)
            if (pthread_create(&tids[t], NULL, fn, arg) != 0) break;
    fn(arg);
    for (int t = 1; t <= started; t++) pthread_join(tids[t], NULL);
    free(tids);
}

/* ---- byte planes ------------------------------------------------------- */
static void split_planes(const uint8_t *src, uint8_t *dst, uint64_t n, int w) {
    if (w == 2) {
        for (uint64_t i = 0; i < n; i++) { dst[i] = src[2 * i]; dst[n + i] = src[2 * i + 1]; }
        return;
    }
    if (w == 4) {
        for (uint64_t i = 0; i < n; i++) {
            dst[i] = src[4 * i]; dst[n + i] = src[4 * i + 1];
            dst[2 * n + i] = src[4 * i + 2]; dst[3 * n + i] = src[4 * i + 3];
        }
        return;
    }
    for (uint64_t i = 0; i < n; i++)
        for (int p = 0; p < w; p++) dst[(uint64_t)p * n + i] = src[i * (uint64_t)w + (uint64_t)p];
}

static void join_planes(const uint8_t *src, uint8_t *dst, uint64_t n, int w) {
    if (w == 2) {
        for (uint64_t i = 0; i < n; i++) { dst[2 * i] = src[i]; dst[2 * i + 1] = src[n + i]; }
        return;
    }
    if (w == 4) {
        for (uint64_t i = 0; i < n; i++) {
            dst[4 * i] = src[i]; dst[4 * i + 1] = src[n + i];
            dst[4 * i + 2] = src[2 * n + i]; dst[4 * i + 3] = src[3 * n + i];
        }
        return;
    }
    for (uint64_t i = 0; i < n; i++)
        for (int p = 0; p < w; p++) dst[i * (uint64_t)w + (uint64_t)p] = src[(uint64_t)p * n + i];
}

/* ---- compression contexts --------------------------------------------- */
/* zstd's parameter numbers (zstd.h, stable since 1.4.0) */
enum { ZC_LEVEL = 100, ZC_WINDOW_LOG = 101, ZC_HASH_LOG = 102, ZC_CHAIN_LOG = 103, ZC_SEARCH_LOG = 104,
       ZC_MIN_MATCH = 105, ZC_STRATEGY = 107, ZC_CONTENT_SIZE = 200, ZSTD_FAST = 1 };

/* A context for `level`. Levels up to 1 use parameters measured on byte
 * planes of trained weights (benchmarks/zstd_params.py): the planes are
 * nearly order-0 sources, so long minimum matches and a small table leave
 * the literals to Huffman coding -- as good a ratio as level 1, faster. */
static zcctx *new_cctx(int level) {
    zcctx *c = Z.create_c();
    if (!c) return NULL;
    int bad = Z.is_error(Z.set_param(c, ZC_LEVEL, level)) | Z.is_error(Z.set_param(c, ZC_CONTENT_SIZE, 1));
    if (level <= 1)
        bad |= Z.is_error(Z.set_param(c, ZC_STRATEGY, ZSTD_FAST)) | Z.is_error(Z.set_param(c, ZC_MIN_MATCH, 7)) |
               Z.is_error(Z.set_param(c, ZC_WINDOW_LOG, 17)) | Z.is_error(Z.set_param(c, ZC_HASH_LOG, 12)) |
               Z.is_error(Z.set_param(c, ZC_CHAIN_LOG, 12)) | Z.is_error(Z.set_param(c, ZC_SEARCH_LOG, 1));
    if (bad) {
        Z.free_c(c);
        return NULL;
    }
    return c;
}

/* ---- the frame, checked ------------------------------------------------ */
int fc_zframe_parse(const uint8_t *p, uint64_t avail, uint64_t frame_len, uint64_t raw_len, int32_t itemsize,
                    fc_zframe *f, fc_status *st) {
    if (frame_len < FC_ZFRAME_HEADER || avail < FC_ZFRAME_HEADER)
        return fc_fail(st, FC_DATA_LOSS, "compressed payload of %llu bytes is shorter than its header",
                       (unsigned long long)frame_len);
    if (fc_load_le32(p) != FC_ZFRAME_MAGIC || p[4] != 1 || p[6] || p[7])
        return fc_fail(st, FC_DATA_LOSS, "compressed payload has a bad header");
    if (p[5] != (uint8_t)itemsize)
        return fc_fail(st, FC_DATA_LOSS, "compressed payload is of %d-byte elements, the entry's dtype of %d",
                       (int)p[5], (int)itemsize);
    if (fc_load_le64(p + 8) != raw_len)
        return fc_fail(st, FC_DATA_LOSS, "compressed payload holds %llu bytes, the entry's shape %llu",
                       (unsigned long long)fc_load_le64(p + 8), (unsigned long long)raw_len);
    f->chunk_raw = fc_load_le32(p + 16);
    f->n_chunks = fc_load_le32(p + 20);
    if (f->chunk_raw == 0 || f->chunk_raw > FC_ZCHUNK_MAX || f->chunk_raw % (uint32_t)itemsize)
        return fc_fail(st, FC_DATA_LOSS, "compressed payload has a bad chunk size %u", f->chunk_raw);
    if ((uint64_t)f->n_chunks != (raw_len + f->chunk_raw - 1) / f->chunk_raw)
        return fc_fail(st, FC_DATA_LOSS, "compressed payload has %u chunks, its size needs %llu", f->n_chunks,
                       (unsigned long long)((raw_len + f->chunk_raw - 1) / f->chunk_raw));
    f->table_end = FC_ZFRAME_HEADER + 4 * (uint64_t)f->n_chunks;
    if (f->table_end > frame_len)
        return fc_fail(st, FC_DATA_LOSS, "compressed payload is shorter than its chunk table");
    f->table = avail >= f->table_end ? p + FC_ZFRAME_HEADER : NULL;
    if (f->table) {
        uint64_t body = 0;
        for (uint32_t c = 0; c < f->n_chunks; c++) {
            uint32_t v = fc_load_le32(f->table + 4 * (uint64_t)c), len = v & 0x7fffffffu;
            uint64_t want = fc_zchunk_raw_len(f, raw_len, c);
            if ((v & 0x80000000u) ? len != want : (len == 0 || len >= want))
                return fc_fail(st, FC_DATA_LOSS, "compressed payload: chunk %u has a bad stored length %u", c, len);
            body += len;
        }
        if (body != frame_len - f->table_end)
            return fc_fail(st, FC_DATA_LOSS, "compressed payload: its chunks add up to %llu bytes, it holds %llu",
                           (unsigned long long)body, (unsigned long long)(frame_len - f->table_end));
    }
    return FC_OK;
}

uint64_t fc_zchunk_raw_len(const fc_zframe *f, uint64_t raw_len, uint32_t c) {
    uint64_t off = (uint64_t)c * f->chunk_raw;
    return raw_len - off < f->chunk_raw ? raw_len - off : f->chunk_raw;
}

int fc_zchunk_decode(const uint8_t *src, uint32_t stored, uint8_t *dst, uint64_t dst_len, int32_t itemsize,
                     void *dctx, uint8_t *scratch, fc_status *st) {
    uint32_t len = stored & 0x7fffffffu;
    if (stored & 0x80000000u) {
        memcpy(dst, src, len);
        return FC_OK;
    }
    uint8_t *into = itemsize > 1 ? scratch : dst;
    size_t got = Z.decompress((zdctx *)dctx, into, dst_len, src, len);
    if (Z.is_error(got) || got != dst_len)
        return fc_fail(st, FC_DATA_LOSS, "a compressed chunk is corrupt (zstd could not restore its %llu bytes)",
                       (unsigned long long)dst_len);
    if (itemsize > 1) join_planes(scratch, dst, dst_len / (uint64_t)itemsize, itemsize);
    return FC_OK;
}

/* ---- decompression ----------------------------------------------------- */
typedef struct {
    const uint8_t *src;      /* the stored bytes of chunks [0, n) */
    const uint8_t *words;    /* their length words, little-endian */
    uint32_t n;
    uint64_t chunk_raw, raw_len;  /* raw_len: of these n chunks */
    int32_t itemsize;
    uint8_t *dst;
    const uint64_t *starts;  /* stored offset of each chunk in src */
    uint32_t *crcs;
    size_t next;             /* atomic */
    int stop;                /* atomic */
    pthread_mutex_t lock;
    fc_status err;
} drun_t;

static uint64_t run_chunk_len(const drun_t *r, uint32_t c) {
    uint64_t off = (uint64_t)c * r->chunk_raw;
    return r->raw_len - off < r->chunk_raw ? r->raw_len - off : r->chunk_raw;
}

static void *decompress_worker(void *arg) {
    drun_t *r = (drun_t *)arg;
    zdctx *dctx = Z.create_d();
    uint8_t *scratch = r->itemsize > 1 ? malloc(r->chunk_raw) : NULL;
    fc_status st;
    fc_status_clear(&st);
    if (!dctx || (r->itemsize > 1 && !scratch)) {
        fc_fail(&st, FC_NOMEM, "out of memory for a decompression context");
        goto fail;
    }
    for (;;) {
        if (__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) break;
        size_t c = __atomic_fetch_add(&r->next, 1, __ATOMIC_RELAXED);
        if (c >= r->n) break;
        uint64_t len = run_chunk_len(r, (uint32_t)c);
        uint8_t *dst = r->dst + c * r->chunk_raw;
        uint32_t stored = fc_load_le32(r->words + 4 * c);
        if (fc_zchunk_decode(r->src + r->starts[c], stored, dst, len, r->itemsize, dctx, scratch, &st)) goto fail;
        r->crcs[c] = fc_crc32c_extend(0, dst, len);
    }
    goto done;
fail:
    pthread_mutex_lock(&r->lock);
    if (r->err.code == FC_OK) r->err = st;
    pthread_mutex_unlock(&r->lock);
    __atomic_store_n(&r->stop, 1, __ATOMIC_RELAXED);
done:
    if (dctx) Z.free_d(dctx);
    free(scratch);
    return NULL;
}

int fc_zdecompress_chunks(const uint8_t *src, uint64_t src_len, const uint8_t *words, uint32_t n, uint64_t chunk_raw,
                          uint64_t raw_len, int32_t itemsize, uint8_t *dst, int nthreads, uint32_t *crc,
                          fc_status *st) {
    if (z_ready(st)) return st->code;
    if (!chunk_raw || chunk_raw % (uint64_t)itemsize || (uint64_t)n != (raw_len + chunk_raw - 1) / chunk_raw)
        return fc_fail(st, FC_INVALID, "chunk geometry does not match the raw length");
    drun_t r;
    memset(&r, 0, sizeof r);
    r.src = src;
    r.words = words;
    r.n = n;
    r.chunk_raw = chunk_raw;
    r.raw_len = raw_len;
    r.itemsize = itemsize;
    r.dst = dst;
    fc_status_clear(&r.err);
    uint64_t *starts = malloc((n ? n : 1) * sizeof(uint64_t));
    uint32_t *crcs = malloc((n ? n : 1) * sizeof(uint32_t));
    if (!starts || !crcs) {
        free(starts);
        free(crcs);
        return fc_fail(st, FC_NOMEM, "out of memory");
    }
    uint64_t at = 0;
    int rc = FC_OK;
    for (uint32_t c = 0; c < n; c++) {
        uint32_t v = fc_load_le32(words + 4 * (uint64_t)c), len = v & 0x7fffffffu;
        uint64_t want = run_chunk_len(&r, c);
        if ((v & 0x80000000u) ? len != want : (len == 0 || len >= want)) {
            rc = fc_fail(st, FC_DATA_LOSS, "compressed payload: chunk %u has a bad stored length %u", c, len);
            break;
        }
        starts[c] = at;
        at += len;
    }
    if (rc == FC_OK && at != src_len)
        rc = fc_fail(st, FC_DATA_LOSS, "compressed payload: its chunks add up to %llu bytes, %llu were read",
                     (unsigned long long)at, (unsigned long long)src_len);
    if (rc == FC_OK) {
        r.starts = starts;
        r.crcs = crcs;
        pthread_mutex_init(&r.lock, NULL);
        run_on_threads(decompress_worker, &r, nthreads, n);
        pthread_mutex_destroy(&r.lock);
        rc = r.err.code;
        if (rc == FC_OK) {
            uint32_t all = 0;
            for (uint32_t c = 0; c < n; c++) all = c == 0 ? crcs[0] : fc_crc32c_combine(all, crcs[c], run_chunk_len(&r, c));
            *crc = all;
        } else {
            *st = r.err;
        }
    }
    free(starts);
    free(crcs);
    return rc;
}

int fc_zdecompress(const uint8_t *frame, uint64_t frame_len, uint8_t *dst, uint64_t raw_len, int32_t itemsize,
                   int nthreads, uint32_t *crc, fc_status *st) {
    fc_zframe f = {0, 0, 0, NULL};
    if (z_ready(st) || fc_zframe_parse(frame, frame_len, frame_len, raw_len, itemsize, &f, st)) return st->code;
    *crc = 0;
    return fc_zdecompress_chunks(frame + f.table_end, frame_len - f.table_end, f.table, f.n_chunks, f.chunk_raw,
                                 raw_len, itemsize, dst, nthreads, crc, st);
}

void *fc_zdctx_new(fc_status *st) {
    if (z_ready(st)) return NULL;
    void *d = Z.create_d();
    if (!d) fc_fail(st, FC_NOMEM, "out of memory for a decompression context");
    return d;
}

void fc_zdctx_free(void *dctx) {
    if (dctx) Z.free_d((zdctx *)dctx);
}

/* ---- compressing straight into the data files --------------------------- */
/* Chunks are taken in plan order; each is compressed into its thread's
 * scratch, then placed at its data file's append cursor in that same order
 * (a thread waits only for the chunk before its own to be placed), then
 * written with pwrite outside the lock. A frame's header and chunk table
 * are written when all its chunks are placed. No frame is ever built in
 * memory: only the threads' scratch buffers are touched, once. */
typedef struct {
    size_t item;
    uint32_t chunk;
    uint64_t off, len;
    uint32_t crc;
} wjob_t;

typedef struct {
    fc_zwrite_item *items;
    size_t n;
    wjob_t *jobs;
    size_t njobs;
    uint32_t *tables;       /* every item's chunk table, item by item */
    size_t *table_at;       /* where item i's table starts in tables */
    uint64_t *cursor;       /* per shard: the next free byte */
    int level;
    uint64_t chunk;
    size_t next;            /* atomic: the next job to take */
    size_t placed;          /* under lock: jobs placed so far */
    int stop;               /* atomic */
    pthread_mutex_t lock;
    pthread_cond_t turn;
    fc_status err;
} wrun_t;

static void wrun_fail(wrun_t *r, size_t item, int code, int err_no, const char *msg) {
    pthread_mutex_lock(&r->lock);
    if (r->err.code == FC_OK) {
        fc_fail(&r->err, code, "%s", msg);
        r->err.err_no = err_no;
        r->err.item = (int64_t)item;
    }
    __atomic_store_n(&r->stop, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&r->turn);
    pthread_mutex_unlock(&r->lock);
}

static int pwrite_all(int fd, const uint8_t *p, uint64_t n, uint64_t off) {
    while (n) {
        ssize_t w = pwrite(fd, p, n > (1u << 30) ? (1u << 30) : (size_t)n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (w == 0) return EIO;
        p += w;
        n -= (uint64_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

static uint32_t nchunks_of(const fc_zwrite_item *it, uint64_t chunk) {
    return it->stored_as_is || !it->len ? 0 : (uint32_t)((it->len + chunk - 1) / chunk);
}

/* A probe before the work: the byte planes of the chunk's first PROBE bytes,
 * compressed. If they do not shrink by 1/64, the chunk is stored as it is
 * without splitting or compressing the rest (random bytes, or mantissas
 * that no coder can shorten cost a pass at memory speed, not zstd's). */
#define PROBE (64u << 10)
static int looks_incompressible(zcctx *cctx, const uint8_t *src, uint64_t len, int32_t w, uint8_t *planes,
                                uint8_t *out, size_t cap) {
    if (len < 4 * (uint64_t)PROBE) return 0;
    uint64_t n = PROBE / (uint64_t)w * (uint64_t)w;
    const uint8_t *in = src;
    if (w > 1) {
        split_planes(src, planes, n / (uint64_t)w, w);
        in = planes;
    }
    size_t got = Z.compress2(cctx, out, cap, in, n);
    return Z.is_error(got) || got > n - n / 64;
}

typedef struct {
    wjob_t *j;
    const fc_zwrite_item *it;
    zcctx *cctx;
    uint8_t *planes, *out;
    size_t cap;
    const uint8_t *data; /* in: the chunk; out: what to store (the chunk, or out) */
    uint64_t stored;
    int refused;
} zjob_args;

/* CRC, probe, byte planes and compression of one chunk (guarded: the
 * chunk may map a source file). */
static void compress_chunk(void *arg) {
    zjob_args *a = (zjob_args *)arg;
    const uint8_t *src = a->data;
    a->j->crc = fc_crc32c_extend(0, src, a->j->len);
    if (looks_incompressible(a->cctx, src, a->j->len, a->it->itemsize, a->planes, a->out, a->cap)) return;
    const uint8_t *in = src;
    if (a->it->itemsize > 1) {
        split_planes(src, a->planes, a->j->len / (uint64_t)a->it->itemsize, a->it->itemsize);
        in = a->planes;
    }
    size_t got = Z.compress2(a->cctx, a->out, a->cap, in, a->j->len);
    if (Z.is_error(got)) {
        a->refused = 1;
        return;
    }
    if (got < a->j->len) {
        a->data = a->out;
        a->stored = got;
    }
}

static void *zwrite_worker(void *arg) {
    wrun_t *r = (wrun_t *)arg;
    zcctx *cctx = new_cctx(r->level);
    size_t cap = Z.ok ? Z.bound(r->chunk) : 0;
    uint8_t *planes = malloc(r->chunk), *out = malloc(cap ? cap : 1);
    if (!cctx || !planes || !out) {
        wrun_fail(r, 0, cctx ? FC_NOMEM : FC_INVALID, 0, "cannot make a zstd compression context (bad level?)");
        goto done;
    }
    for (;;) {
        if (__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) break;
        size_t k = __atomic_fetch_add(&r->next, 1, __ATOMIC_RELAXED);
        if (k >= r->njobs) break;
        wjob_t *j = &r->jobs[k];
        fc_zwrite_item *it = &r->items[j->item];
        const uint8_t *src = it->src + j->off;
        zjob_args a = {j, it, cctx, planes, out, cap, src, j->len, 0};
        if (!it->stored_as_is && fc_guarded(compress_chunk, &a)) { /* its memory maps a file that was cut */
            wrun_fail(r, j->item, FC_DATA_LOSS, EFAULT,
                      "the tensor's memory vanished while it was read (a mapped source file was truncated)");
            break;
        }
        if (a.refused) {
            wrun_fail(r, j->item, FC_INVALID, 0, "zstd refused to compress a chunk");
            break;
        }
        const uint8_t *data = a.data;
        uint64_t stored = a.stored;
        int as_is = it->stored_as_is;
        /* place it, in plan order */
        pthread_mutex_lock(&r->lock);
        while (r->placed != k && !__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) pthread_cond_wait(&r->turn, &r->lock);
        if (__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) {
            pthread_mutex_unlock(&r->lock);
            break;
        }
        uint64_t *cur = &r->cursor[it->shard];
        if (j->chunk == 0) {
            it->offset = *cur;
            *cur += as_is ? 0 : FC_ZFRAME_HEADER + 4 * (uint64_t)nchunks_of(it, r->chunk);
        }
        uint64_t at = *cur;
        *cur += stored;
        if (!as_is)
            r->tables[r->table_at[j->item] + j->chunk] = (uint32_t)stored | (data == src ? 0x80000000u : 0u);
        it->size = *cur - it->offset;
        r->placed = k + 1;
        pthread_cond_broadcast(&r->turn);
        pthread_mutex_unlock(&r->lock);
        int e = pwrite_all(it->fd, data, stored, at);
        if (e) {
            wrun_fail(r, j->item, e == EFAULT ? FC_DATA_LOSS : FC_IO, e,
                      e == EFAULT ? "the tensor's memory vanished while it was written (a mapped source file was "
                                    "truncated)" : "pwrite");
            break;
        }
    }
done:
    if (cctx) Z.free_c(cctx);
    free(planes);
    free(out);
    return NULL;
}

static int write_frame_heads(wrun_t *r) {
    size_t k = 0;
    for (size_t i = 0; i < r->n; i++) {
        fc_zwrite_item *it = &r->items[i];
        uint32_t nch = nchunks_of(it, r->chunk);
        if (it->stored_as_is || !it->len) { /* no frame; its jobs (if any) are skipped */
            k += (size_t)((it->len + r->chunk - 1) / r->chunk);
            continue;
        }
        uint64_t head_len = FC_ZFRAME_HEADER + 4 * (uint64_t)nch;
        uint8_t *head = malloc(head_len);
        if (!head) return fc_fail(&r->err, FC_NOMEM, "out of memory");
        fc_store_le32(head, FC_ZFRAME_MAGIC);
        head[4] = 1;
        head[5] = (uint8_t)it->itemsize;
        head[6] = head[7] = 0;
        fc_store_le64(head + 8, it->len);
        fc_store_le32(head + 16, (uint32_t)r->chunk);
        fc_store_le32(head + 20, nch);
        uint32_t crc = 0;
        for (uint32_t c = 0; c < nch; c++, k++) {
            fc_store_le32(head + FC_ZFRAME_HEADER + 4 * (uint64_t)c, r->tables[r->table_at[i] + c]);
            crc = c == 0 ? r->jobs[k].crc : fc_crc32c_combine(crc, r->jobs[k].crc, r->jobs[k].len);
        }
        it->crc = crc;
        int e = pwrite_all(it->fd, head, head_len, it->offset);
        free(head);
        if (e) {
            fc_fail(&r->err, FC_IO, "pwrite");
            r->err.err_no = e;
            r->err.item = (int64_t)i;
            return FC_IO;
        }
    }
    return FC_OK;
}

int fc_zwrite_run(fc_zwrite_item *items, size_t n, int nshards, int level, uint64_t chunk, int nthreads,
                  fc_status *st) {
    if (z_ready(st)) return st->code;
    if (chunk == 0 || chunk > FC_ZCHUNK_MAX) return fc_fail(st, FC_INVALID, "chunk size out of range");
    wrun_t r;
    memset(&r, 0, sizeof r);
    fc_status_clear(&r.err);
    size_t ntab = 0;
    for (size_t i = 0; i < n; i++) {
        fc_zwrite_item *it = &items[i];
        it->offset = it->size = 0;
        if (it->shard < 0 || it->shard >= nshards) return fc_fail(st, FC_INVALID, "shard out of range");
        if (!it->stored_as_is && (it->itemsize < 1 || it->itemsize > 255 || chunk % (uint64_t)it->itemsize ||
                                  it->len % (uint64_t)it->itemsize))
            return fc_fail(st, FC_INVALID, "element size %d does not divide the chunk", (int)it->itemsize);
        if (!it->stored_as_is && (it->len + chunk - 1) / chunk > UINT32_MAX)
            return fc_fail(st, FC_INVALID, "tensor too large for its chunk size");
        uint64_t pieces = it->len ? (it->len + chunk - 1) / chunk : 0;
        r.njobs += (size_t)pieces;
        ntab += nchunks_of(it, chunk);
    }
    r.items = items;
    r.n = n;
    r.level = level;
    r.chunk = chunk;
    r.jobs = calloc(r.njobs ? r.njobs : 1, sizeof(wjob_t));
    r.tables = calloc(ntab ? ntab : 1, sizeof(uint32_t));
    r.table_at = calloc(n ? n : 1, sizeof(size_t));
    r.cursor = calloc((size_t)nshards, sizeof(uint64_t));
    int rc = FC_OK;
    if (!r.jobs || !r.tables || !r.table_at || !r.cursor) {
        rc = fc_fail(st, FC_NOMEM, "out of memory");
        goto out;
    }
    size_t k = 0, t = 0;
    for (size_t i = 0; i < n; i++) {
        r.table_at[i] = t;
        t += nchunks_of(&items[i], chunk);
        uint32_t c = 0;
        for (uint64_t off = 0; off < items[i].len; off += chunk, k++, c++) {
            r.jobs[k].item = i;
            r.jobs[k].chunk = c;
            r.jobs[k].off = off;
            r.jobs[k].len = items[i].len - off < chunk ? items[i].len - off : chunk;
        }
    }
    pthread_mutex_init(&r.lock, NULL);
    pthread_cond_init(&r.turn, NULL);
    run_on_threads(zwrite_worker, &r, nthreads, r.njobs);
    pthread_cond_destroy(&r.turn);
    pthread_mutex_destroy(&r.lock);
    rc = r.err.code ? r.err.code : write_frame_heads(&r);
    for (size_t i = 0; i < n && rc == FC_OK; i++)
        if (!items[i].len && !items[i].stored_as_is) items[i].offset = 0;
    if (rc) *st = r.err;
out:
    free(r.jobs);
    free(r.tables);
    free(r.table_at);
    free(r.cursor);
    return rc;
}
