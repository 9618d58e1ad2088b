/* Parallel positional I/O with CRC32C in the same pass.
 *
 * Items (one per tensor payload) are sorted by (fd, offset) and cut into
 * batches: neighbouring small items share one preadv/pwritev, a large item
 * is split into pieces. Worker threads (created per call, so fork() is
 * harmless) take batches from an atomic counter, do the system call, then
 * checksum the piece while it is still in cache. Each piece's CRC is
 * combined per item afterwards. No Python calls anywhere. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "fastckpt.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#if defined(__linux__)
#define HAVE_PWRITEV2 1
#ifndef RWF_DONTCACHE
#define RWF_DONTCACHE 0x00000080 /* Linux 6.14+: write through, drop the pages */
#endif
#endif

#define MAX_GAP 65536
#define MAX_IOV 512
#define DEFAULT_PIECE (1u << 20)

typedef struct {
    size_t item;
    uint64_t off_in_item;
    uint64_t len;
    uint64_t file_off;
    uint64_t h; /* FC_IO_HASH: XXH64 of the segment */
    uint32_t crc;
} seg_t;

typedef struct {
    size_t first, count; /* segments */
} batch_t;

typedef struct {
    fc_io_item *items;
    seg_t *segs;
    batch_t *batches;
    size_t nbatches;
    int is_write;
    int hash_only;          /* FC_IO_HASH: each segment's XXH64, no CRC, no system call */
    int uncached;           /* atomic: try RWF_DONTCACHE; cleared when refused */
    size_t next;            /* atomic */
    int stop;               /* atomic */
    pthread_mutex_t lock;
    fc_status err;
} job_t;

static void record_error(job_t *j, size_t item, int code, int err_no, const char *what) {
    pthread_mutex_lock(&j->lock);
    if (j->err.code == FC_OK) {
        fc_fail(&j->err, code, "%s", what);
        j->err.err_no = err_no;
        j->err.item = (int64_t)item;
    }
    pthread_mutex_unlock(&j->lock);
    __atomic_store_n(&j->stop, 1, __ATOMIC_RELAXED);
}

/* The segment holding byte `done` of the batch (to name the failing item). */
static size_t item_at(const job_t *j, const batch_t *b, uint64_t done) {
    const seg_t *s = j->segs + b->first;
    uint64_t base = s[0].file_off;
    for (size_t i = 0; i < b->count; i++)
        if (s[i].file_off - base + s[i].len > done) return s[i].item;
    return s[b->count - 1].item;
}

typedef struct {
    job_t *j;
    const batch_t *b;
} crc_args;

/* The CRC of every segment of a batch about to be written (guarded: the
 * memory may map a source file). */
static void crc_batch(void *arg) {
    crc_args *a = (crc_args *)arg;
    for (size_t i = 0; i < a->b->count; i++) {
        seg_t *sg = &a->j->segs[a->b->first + i];
        const uint8_t *p = (const uint8_t *)a->j->items[sg->item].buf + sg->off_in_item;
        if (a->j->hash_only)
            sg->h = fc_xxh64(p, (size_t)sg->len, 0);
        else
            sg->crc = fc_crc32c_extend(0, p, (size_t)sg->len);
    }
}

static void check_batch(void *arg) {
    crc_args *a = (crc_args *)arg;
    for (size_t i = 0; i < a->b->count; i++) {
        seg_t *sg = &a->j->segs[a->b->first + i];
        fc_io_item *it = &a->j->items[sg->item];
        if (it->verify) sg->crc = fc_crc32c_extend(0, (const uint8_t *)it->buf + sg->off_in_item, (size_t)sg->len);
    }
}

static int run_batch(job_t *j, const batch_t *b, uint8_t **scratch) {
    if (!j->is_write && j->items[j->segs[b->first].item].fd < 0) { /* in memory already: checked only */
        crc_args a = {j, b};
        if (fc_guarded(check_batch, &a)) {
            record_error(j, j->segs[b->first].item, FC_DATA_LOSS, EFAULT,
                         "the mapped data file was cut while it was checked");
            return -1;
        }
        return 0;
    }
    struct iovec iov[2 * MAX_IOV];
    int n = 0;
    const seg_t *s = j->segs + b->first;
    uint64_t pos = s[0].file_off, total = 0;
    for (size_t i = 0; i < b->count; i++) {
        if (s[i].file_off > pos) { /* gap (alignment padding) */
            size_t gap = (size_t)(s[i].file_off - pos);
            if (!*scratch && !(*scratch = (uint8_t *)malloc(MAX_GAP))) {
                record_error(j, s[i].item, FC_NOMEM, ENOMEM, "out of memory");
                return -1;
            }
            iov[n].iov_base = (void *)*scratch;
            iov[n++].iov_len = gap;
            total += gap;
        }
        fc_io_item *it = &j->items[s[i].item];
        iov[n].iov_base = (uint8_t *)it->buf + s[i].off_in_item;
        iov[n++].iov_len = (size_t)s[i].len;
        total += s[i].len;
        pos = s[i].file_off + s[i].len;
    }
    if (j->is_write) {
        crc_args a = {j, b};
        if (fc_guarded(crc_batch, &a)) { /* its source memory maps a file that was cut */
            record_error(j, s[0].item, FC_DATA_LOSS, EFAULT,
                         "the tensor's memory vanished while it was read (a mapped source file was truncated)");
            return -1;
        }
        if (j->hash_only) return 0;
    }
    int fd = j->items[s[0].item].fd;
    uint64_t done = 0;
    struct iovec *v = iov;
    while (done < total) {
        off_t at = (off_t)(s[0].file_off + done);
        ssize_t r;
        if (!j->is_write) {
            r = preadv(fd, v, n, at);
#ifdef HAVE_PWRITEV2
        } else if (__atomic_load_n(&j->uncached, __ATOMIC_RELAXED)) {
            r = pwritev2(fd, v, n, at, RWF_DONTCACHE);
            if (r < 0 && (errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS)) {
                __atomic_store_n(&j->uncached, 0, __ATOMIC_RELAXED); /* not here: plain writes */
                continue;
            }
#endif
        } else {
            r = pwritev(fd, v, n, at);
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno == EFAULT && j->is_write) {
            record_error(j, item_at(j, b, done), FC_DATA_LOSS, EFAULT,
                         "the tensor's memory vanished while it was written (a mapped source file was truncated)");
            return -1;
        }
        if (r < 0) {
            record_error(j, item_at(j, b, done), FC_IO, errno,
                         j->is_write ? "write failed" : "read failed");
            return -1;
        }
        if (r == 0) {
            record_error(j, item_at(j, b, done), j->is_write ? FC_IO : FC_DATA_LOSS,
                         j->is_write ? EIO : 0,
                         j->is_write ? "write made no progress" : "data file is truncated");
            return -1;
        }
        done += (uint64_t)r;
        while (n && (size_t)r >= v->iov_len) {
            r -= (ssize_t)v->iov_len;
            v++;
            n--;
        }
        if (n) {
            v->iov_base = (uint8_t *)v->iov_base + r;
            v->iov_len -= (size_t)r;
        }
    }
    if (!j->is_write)
        for (size_t i = 0; i < b->count; i++) {
            seg_t *sg = &j->segs[b->first + i];
            fc_io_item *it = &j->items[sg->item];
            if (it->verify)
                sg->crc = fc_crc32c_extend(0, (uint8_t *)it->buf + sg->off_in_item, (size_t)sg->len);
        }
    return 0;
}

static void *worker(void *arg) {
    job_t *j = (job_t *)arg;
    uint8_t *scratch = NULL;
    for (;;) {
        if (__atomic_load_n(&j->stop, __ATOMIC_RELAXED)) break;
        size_t k = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (k >= j->nbatches) break;
        if (run_batch(j, &j->batches[k], &scratch)) break;
    }
    free(scratch);
    return NULL;
}

/* File order: by descriptor, then offset (the sort is stable). */
static int item_less(const void *ctx, size_t a, size_t b) {
    const fc_io_item *x = &((const fc_io_item *)ctx)[a], *y = &((const fc_io_item *)ctx)[b];
    return x->fd != y->fd ? x->fd < y->fd : x->file_off < y->file_off;
}

static seg_t *add_seg(job_t *j, size_t *nseg, size_t item, uint64_t off, uint64_t len) {
    seg_t *s = &j->segs[(*nseg)++];
    s->item = item;
    s->off_in_item = off;
    s->len = len;
    s->file_off = j->items[item].file_off + off;
    s->crc = 0;
    s->h = 0;
    j->batches[j->nbatches - 1].count++;
    return s;
}

static void new_batch(job_t *j, size_t nseg) {
    j->batches[j->nbatches].first = nseg;
    j->batches[j->nbatches].count = 0;
    j->nbatches++;
}

/* Cuts the sorted items into batches of segments: small neighbours share a
 * batch (up to `piece` bytes, small gaps allowed), large items are split. */
static size_t plan(job_t *j, size_t n, const size_t *order, uint64_t piece) {
    size_t nseg = 0;
    int open = 0, cur_fd = -1;
    uint64_t cur_end = 0, cur_bytes = 0;
    j->nbatches = 0;
    for (size_t k = 0; k < n; k++) {
        const fc_io_item *it = &j->items[order[k]];
        if (it->len == 0) continue;
        if (it->len > piece) {
            for (uint64_t off = 0; off < it->len; off += piece) {
                new_batch(j, nseg);
                add_seg(j, &nseg, order[k], off, it->len - off < piece ? it->len - off : piece);
            }
            open = 0;
            continue;
        }
        /* Reads may skip gaps (into scratch); writes never span one: the gap
         * may hold another pass's data (the file is pre-sized, so gaps
         * nobody writes read as zeros). */
        uint64_t gap = it->file_off >= cur_end ? it->file_off - cur_end : UINT64_MAX;
        if (j->is_write && gap) gap = UINT64_MAX;
        if (!open || it->fd != cur_fd || gap > MAX_GAP || cur_bytes + gap + it->len > piece ||
            j->batches[j->nbatches - 1].count >= MAX_IOV) {
            new_batch(j, nseg);
            open = 1;
            cur_bytes = 0;
            gap = 0;
        }
        add_seg(j, &nseg, order[k], 0, it->len);
        cur_bytes += gap + it->len;
        cur_end = it->file_off + it->len;
        cur_fd = it->fd;
    }
    return nseg;
}

/* Writes to several files: the batches taken in turn from each file (in
 * each file's own order) instead of file after file. A buffered write holds
 * its file's lock (ext4: the inode's), so threads writing one file at a time
 * take turns; writing different files they run side by side (1 GiB here:
 * 0.20 s to one file, 0.11 s to two files on two threads). Returns 0, or -1
 * out of memory (the order is then left as it was). */
static int interleave_files(job_t *j) {
    size_t nb = j->nbatches, groups = 0;
    if (nb < 2) return 0;
    for (size_t b = 0; b < nb; b++)
        if (b == 0 || j->items[j->segs[j->batches[b].first].item].fd !=
                          j->items[j->segs[j->batches[b - 1].first].item].fd)
            groups++;
    if (groups < 2) return 0;
    size_t *next = (size_t *)malloc(groups * sizeof(size_t)), *end = (size_t *)malloc(groups * sizeof(size_t));
    batch_t *out = (batch_t *)malloc(nb * sizeof(batch_t));
    if (!next || !end || !out) {
        free(next);
        free(end);
        free(out);
        return -1;
    }
    size_t g = 0;
    next[0] = 0;
    for (size_t b = 1; b < nb; b++)
        if (j->items[j->segs[j->batches[b].first].item].fd != j->items[j->segs[j->batches[b - 1].first].item].fd) {
            end[g++] = b;
            next[g] = b;
        }
    end[g] = nb;
    size_t k = 0;
    while (k < nb)
        for (size_t i = 0; i < groups; i++)
            if (next[i] < end[i]) out[k++] = j->batches[next[i]++];
    memcpy(j->batches, out, nb * sizeof(batch_t));
    free(next);
    free(end);
    free(out);
    return 0;
}

/* Each item's digest from its segments' (consecutive per item, in order). */
static int combine_digests(job_t *j, size_t n, size_t nsegs, uint64_t piece, fc_status *st) {
    uint64_t empty = fc_xxh64("", 0, 0);
    for (size_t i = 0; i < n; i++) j->items[i].digest = empty;
    uint8_t *buf = NULL;
    size_t cap = 0;
    for (size_t s = 0; s < nsegs;) {
        size_t it = j->segs[s].item, e = s + 1;
        while (e < nsegs && j->segs[e].item == it) e++;
        if (j->items[it].len <= piece) {
            j->items[it].digest = j->segs[s].h;
        } else {
            size_t need = (e - s) * 8;
            if (need > cap) {
                uint8_t *nb = (uint8_t *)realloc(buf, need);
                if (!nb) {
                    free(buf);
                    return fc_fail(st, FC_NOMEM, "out of memory");
                }
                buf = nb;
                cap = need;
            }
            for (size_t k = s; k < e; k++)
                for (int b = 0; b < 8; b++) buf[(k - s) * 8 + (size_t)b] = (uint8_t)(j->segs[k].h >> (8 * b));
            j->items[it].digest = fc_xxh64(buf, need, j->items[it].len);
        }
        s = e;
    }
    free(buf);
    return FC_OK;
}

int fc_io_run(fc_io_item *items, size_t n, int mode, int nthreads, uint64_t piece,
              fc_status *st) {
    int is_write = mode != FC_IO_READ;
    int digest = mode == FC_IO_HASH;
    if (digest) piece = FC_DIGEST_BLOCK; /* the digest is defined by these pieces */
    if (piece == 0) piece = DEFAULT_PIECE;
    if (piece < 4096) piece = 4096;
    if (piece > (1u << 30)) piece = 1u << 30;
    size_t maxseg = 0;
    for (size_t i = 0; i < n; i++) {
        if (items[i].len > (uint64_t)INT64_MAX || items[i].file_off > (uint64_t)INT64_MAX - items[i].len)
            return fc_fail(st, FC_INVALID, "item %zu: offset or length out of range", i);
        maxseg += (size_t)((items[i].len + piece - 1) / piece);
    }
    job_t j;
    memset(&j, 0, sizeof j);
    j.items = items;
    j.is_write = is_write;
    j.hash_only = digest;
    j.uncached = mode == FC_IO_WRITE_UNCACHED;
    fc_status_clear(&j.err);
    size_t *order = (size_t *)malloc((n ? n : 1) * sizeof(size_t));
    j.segs = (seg_t *)malloc((maxseg ? maxseg : 1) * sizeof(seg_t));
    j.batches = (batch_t *)malloc((maxseg ? maxseg : 1) * sizeof(batch_t));
    if (!order || !j.segs || !j.batches) {
        free(order);
        free(j.segs);
        free(j.batches);
        return fc_fail(st, FC_NOMEM, "out of memory planning I/O");
    }
    int sorted = 1;
    for (size_t i = 0; i < n; i++) {
        order[i] = i;
        if (i && (items[i].fd < items[i - 1].fd ||
                  (items[i].fd == items[i - 1].fd && items[i].file_off < items[i - 1].file_off)))
            sorted = 0;
    }
    if (!sorted && fc_sort_indices(order, n, item_less, items)) { /* usually in file order already */
        free(order);
        free(j.segs);
        free(j.batches);
        return fc_fail(st, FC_NOMEM, "out of memory planning I/O");
    }
    size_t nsegs = plan(&j, n, order, piece);
    if (is_write && !digest) (void)interleave_files(&j); /* (out of memory: file after file, as before) */
    pthread_mutex_init(&j.lock, NULL);

    int nworkers = nthreads < 1 ? 1 : nthreads;
    if ((size_t)nworkers > j.nbatches) nworkers = j.nbatches ? (int)j.nbatches : 1;
    pthread_t *tids = (pthread_t *)calloc((size_t)nworkers, sizeof(pthread_t));
    int started = 0;
    for (int t = 1; tids && t < nworkers; t++) {
        if (pthread_create(&tids[t], NULL, worker, &j) != 0) break;
        started++;
    }
    worker(&j);
    for (int t = 1; t <= started; t++) pthread_join(tids[t], NULL);
    free(tids);
    pthread_mutex_destroy(&j.lock);

    int rc = FC_OK;
    if (j.err.code != FC_OK) {
        *st = j.err;
        rc = j.err.code;
    } else {
        /* combine piece CRCs per item (pieces of an item are consecutive) */
        uint32_t *acc = (uint32_t *)calloc(n ? n : 1, sizeof(uint32_t));
        if (!acc) rc = fc_fail(st, FC_NOMEM, "out of memory");
        for (size_t s = 0; acc && s < nsegs; s++) {
            seg_t *sg = &j.segs[s];
            acc[sg->item] = digest ? 0 : sg->off_in_item ? fc_crc32c_combine(acc[sg->item], sg->crc, sg->len)
                                            : sg->crc;
        }
        for (size_t i = 0; acc && i < n; i++) {
            if (is_write) {
                items[i].crc = acc[i];
            } else if (items[i].verify && acc[i] != items[i].crc) {
                st->item = (int64_t)i;
                st->err_no = 0;
                rc = fc_fail(st, FC_DATA_LOSS, "checksum does not match: stored %u vs. calculated %u",
                             fc_crc_mask(items[i].crc), fc_crc_mask(acc[i]));
                break;
            }
        }
        free(acc);
        if (rc == FC_OK && digest) rc = combine_digests(&j, n, nsegs, piece, st);
    }
    free(order);
    free(j.segs);
    free(j.batches);
    return rc;
}

static void *async_runner(void *arg) {
    fc_io_async *a = (fc_io_async *)arg;
    a->rc = fc_io_run(a->items, a->n, a->mode, a->nthreads, a->piece, &a->st);
    return NULL;
}

void fc_io_start(fc_io_async *a, fc_io_item *items, size_t n, int mode, int nthreads, uint64_t piece) {
    memset(a, 0, sizeof *a);
    a->items = items;
    a->n = n;
    a->mode = mode;
    a->nthreads = nthreads;
    a->piece = piece;
    fc_status_clear(&a->st);
    a->started = pthread_create(&a->tid, NULL, async_runner, a) == 0;
    if (!a->started) async_runner(a); /* no thread to be had: the work is done now */
}

int fc_io_wait(fc_io_async *a, fc_status *st) {
    if (a->started) {
        pthread_join(a->tid, NULL);
        a->started = 0;
    }
    if (a->rc) *st = a->st;
    return a->rc;
}

typedef struct {
    const uint8_t *p;
    uint64_t n;
    uint32_t crc;
} crc_part;

static void *crc_worker(void *arg) {
    crc_part *c = (crc_part *)arg;
    c->crc = fc_crc32c_extend(0, c->p, (size_t)c->n);
    return NULL;
}

uint32_t fc_crc32c_parallel(const void *data, uint64_t n, int nthreads) {
    if (nthreads < 2 || n < (8u << 20)) return fc_crc32c_extend(0, data, (size_t)n);
    if (nthreads > 64) nthreads = 64;
    crc_part parts[64];
    pthread_t tids[64];
    uint64_t step = n / (uint64_t)nthreads;
    int started[64] = {0};
    for (int t = 0; t < nthreads; t++) {
        parts[t].p = (const uint8_t *)data + step * (uint64_t)t;
        parts[t].n = t == nthreads - 1 ? n - step * (uint64_t)t : step;
        if (t > 0) started[t] = pthread_create(&tids[t], NULL, crc_worker, &parts[t]) == 0;
        if (t > 0 && !started[t]) crc_worker(&parts[t]);
    }
    crc_worker(&parts[0]);
    uint32_t crc = parts[0].crc;
    for (int t = 1; t < nthreads; t++) {
        if (started[t]) pthread_join(tids[t], NULL);
        crc = fc_crc32c_combine(crc, parts[t].crc, parts[t].n);
    }
    return crc;
}
