/* The .index file: a LevelDB-style table with TensorFlow's options
 * (256 KiB blocks, restart interval 16, index restart interval 1, no
 * compression, empty metaindex block, TF's early flush of huge entries). */
#include "fastckpt.h"

#include <stdlib.h>
#include <string.h>

#define MAGIC_LO 0x8b80fb57u
#define MAGIC_HI 0xdb477524u
#define TRAILER 5

typedef struct {
    fc_buf buf;
    uint32_t *restarts;
    size_t nrestarts, cap;
    int counter;
    int interval;
    fc_buf last;
    size_t entries;
} block_builder;

struct fc_table_builder {
    fc_buf out;
    block_builder data, index;
    fc_buf last_key;
    int have_key;
    int pending;
    uint64_t pending_off, pending_size;
};

static int bb_init(block_builder *b, int interval) {
    memset(b, 0, sizeof *b);
    b->interval = interval;
    b->cap = 16;
    b->restarts = (uint32_t *)malloc(b->cap * sizeof(uint32_t));
    if (!b->restarts) return -1;
    b->restarts[0] = 0;
    b->nrestarts = 1;
    return 0;
}

static void bb_reset(block_builder *b) {
    b->buf.len = 0;
    b->last.len = 0;
    b->restarts[0] = 0;
    b->nrestarts = 1;
    b->counter = 0;
    b->entries = 0;
}

static void bb_free(block_builder *b) {
    fc_buf_free(&b->buf);
    fc_buf_free(&b->last);
    free(b->restarts);
}

static size_t bb_estimate(const block_builder *b) {
    return b->buf.len + 4 * b->nrestarts + 4;
}

static size_t common_prefix(const uint8_t *a, size_t na, const uint8_t *b, size_t nb) {
    size_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

static int bb_add(block_builder *b, const uint8_t *key, size_t klen, const uint8_t *val,
                  size_t vlen) {
    size_t shared = 0;
    if (b->counter >= b->interval) {
        if (b->nrestarts == b->cap) {
            uint32_t *r = (uint32_t *)realloc(b->restarts, 2 * b->cap * sizeof(uint32_t));
            if (!r) return -1;
            b->restarts = r;
            b->cap *= 2;
        }
        if (b->buf.len > UINT32_MAX) return -1;
        b->restarts[b->nrestarts++] = (uint32_t)b->buf.len;
        b->counter = 0;
    } else {
        shared = common_prefix(b->last.p, b->last.len, key, klen);
    }
    uint8_t hdr[3 * FC_MAX_VARINT64];
    size_t h = fc_put_varint(hdr, shared);
    h += fc_put_varint(hdr + h, klen - shared);
    h += fc_put_varint(hdr + h, vlen);
    if (fc_buf_append(&b->buf, hdr, h) || fc_buf_append(&b->buf, key + shared, klen - shared) ||
        fc_buf_append(&b->buf, val, vlen))
        return -1;
    b->last.len = 0;
    if (fc_buf_append(&b->last, key, klen)) return -1;
    b->counter++;
    b->entries++;
    return 0;
}

static int bb_finish(block_builder *b) {
    for (size_t i = 0; i < b->nrestarts; i++) {
        uint8_t le[4];
        fc_store_le32(le, (uint32_t)b->restarts[i]);
        if (fc_buf_append(&b->buf, le, 4)) return -1;
    }
    uint8_t le[4];
    fc_store_le32(le, (uint32_t)b->nrestarts);
    return fc_buf_append(&b->buf, le, 4);
}

/* Appends the finished block and its trailer to out; returns its handle. */
static int write_block(fc_table_builder *tb, block_builder *b, uint64_t *off, uint64_t *size) {
    if (bb_finish(b)) return -1;
    *off = tb->out.len;
    *size = b->buf.len;
    uint8_t trailer[TRAILER] = {0};
    uint32_t crc = fc_crc32c_extend(0, b->buf.p, b->buf.len);
    crc = fc_crc_mask(fc_crc32c_extend(crc, trailer, 1));
    fc_store_le32(trailer + 1, crc);
    if (fc_buf_append(&tb->out, b->buf.p, b->buf.len) ||
        fc_buf_append(&tb->out, trailer, TRAILER))
        return -1;
    bb_reset(b);
    return 0;
}

static size_t put_handle(uint8_t *p, uint64_t off, uint64_t size) {
    size_t n = fc_put_varint(p, off);
    return n + fc_put_varint(p + n, size);
}

static int add_index_entry(fc_table_builder *tb, const uint8_t *key, size_t klen) {
    uint8_t h[2 * FC_MAX_VARINT64];
    size_t n = put_handle(h, tb->pending_off, tb->pending_size);
    tb->pending = 0;
    return bb_add(&tb->index, key, klen, h, n);
}

static int flush_data(fc_table_builder *tb) {
    if (tb->data.entries == 0) return 0;
    if (write_block(tb, &tb->data, &tb->pending_off, &tb->pending_size)) return -1;
    tb->pending = 1;
    return 0;
}

fc_table_builder *fc_table_builder_new(void) {
    fc_table_builder *tb = (fc_table_builder *)calloc(1, sizeof *tb);
    if (!tb) return NULL;
    if (bb_init(&tb->data, 16) || bb_init(&tb->index, 1)) {
        fc_table_builder_free(tb);
        return NULL;
    }
    return tb;
}

void fc_table_builder_free(fc_table_builder *tb) {
    if (!tb) return;
    fc_buf_free(&tb->out);
    bb_free(&tb->data);
    bb_free(&tb->index);
    fc_buf_free(&tb->last_key);
    free(tb);
}

/* LevelDB's FindShortestSeparator for the bytewise comparator. */
static int add_separator(fc_table_builder *tb, const uint8_t *key, size_t klen) {
    const uint8_t *l = tb->last_key.p;
    size_t ll = tb->last_key.len;
    size_t i = common_prefix(l, ll, key, klen);
    if (i < ll && i < klen && l[i] < 0xff && (unsigned)l[i] + 1 < key[i]) {
        uint8_t saved = l[i];
        tb->last_key.p[i] = (uint8_t)(saved + 1);
        int r = add_index_entry(tb, l, i + 1);
        tb->last_key.p[i] = saved;
        return r;
    }
    return add_index_entry(tb, l, ll);
}

int fc_table_add(fc_table_builder *tb, const uint8_t *key, size_t klen, const uint8_t *val,
                 size_t vlen, fc_status *st) {
    if (tb->have_key) {
        if (fc_key_compare(tb->last_key.p, tb->last_key.len, key, klen) >= 0)
            return fc_fail(st, FC_INVALID, "table keys must be strictly increasing");
    }
    int err = 0;
    if (tb->have_key && klen + vlen >= 2 * (size_t)FC_TABLE_BLOCK_SIZE)
        err = flush_data(tb);
    if (!err && tb->pending) err = add_separator(tb, key, klen);
    if (!err) err = bb_add(&tb->data, key, klen, val, vlen);
    if (!err) {
        tb->last_key.len = 0;
        err = fc_buf_append(&tb->last_key, key, klen);
        tb->have_key = 1;
    }
    if (!err && bb_estimate(&tb->data) >= FC_TABLE_BLOCK_SIZE) err = flush_data(tb);
    return err ? fc_fail(st, FC_NOMEM, "out of memory building the index") : FC_OK;
}

int fc_table_finish(fc_table_builder *tb, const uint8_t **out, size_t *len, fc_status *st) {
    uint64_t meta_off, meta_size, idx_off, idx_size;
    block_builder meta;
    if (bb_init(&meta, 16)) return fc_fail(st, FC_NOMEM, "out of memory");
    int err = flush_data(tb) || write_block(tb, &meta, &meta_off, &meta_size);
    bb_free(&meta);
    if (!err && tb->pending) {
        /* short successor: bump the first byte that is not 0xff */
        fc_buf *k = &tb->last_key;
        size_t i = 0;
        while (i < k->len && k->p[i] == 0xff) i++;
        if (i < k->len) {
            k->p[i]++;
            k->len = i + 1;
        }
        err = add_index_entry(tb, k->p, k->len);
    }
    if (!err) err = write_block(tb, &tb->index, &idx_off, &idx_size);
    if (!err) {
        uint8_t footer[FC_TABLE_FOOTER_LEN] = {0};
        size_t n = put_handle(footer, meta_off, meta_size);
        put_handle(footer + n, idx_off, idx_size);
        fc_store_le32(footer + 40, MAGIC_LO);
        fc_store_le32(footer + 44, MAGIC_HI);
        err = fc_buf_append(&tb->out, footer, sizeof footer);
    }
    if (err) return fc_fail(st, FC_NOMEM, "out of memory building the index");
    *out = tb->out.p;
    *len = tb->out.len;
    return FC_OK;
}

/* ---- reading ------------------------------------------------------------ */


/* Checks a block handle against the file and the block's trailer. */
static int load_block(const uint8_t *data, size_t len, uint64_t off, uint64_t size,
                      const uint8_t **block, size_t *blen, const char *what, fc_status *st) {
    size_t limit = len - FC_TABLE_FOOTER_LEN;
    if (off > limit || size > limit - off || TRAILER > limit - off - size)
        return fc_fail(st, FC_DATA_LOSS,
                       "%s block handle (offset %llu, size %llu) is outside the file",
                       what, (unsigned long long)off, (unsigned long long)size);
    const uint8_t *b = data + off;
    uint8_t type = b[size];
    uint32_t crc = fc_crc32c_extend(fc_crc32c_extend(0, b, (size_t)size), &type, 1);
    if (fc_crc_mask(crc) != fc_load_le32(b + size + 1))
        return fc_fail(st, FC_DATA_LOSS, "%s block checksum mismatch", what);
    if (type == 1)
        return fc_fail(st, FC_UNSUPPORTED, "snappy-compressed index blocks are not supported");
    if (type != 0)
        return fc_fail(st, FC_DATA_LOSS, "%s block has unknown compression type %u", what, type);
    *block = b;
    *blen = (size_t)size;
    return FC_OK;
}

typedef struct {
    fc_buf key;
    int have_prev;
    fc_buf prev;
} iter_state;

static int parse_block(const uint8_t *b, size_t n, iter_state *it, fc_table_visit visit,
                       void *ctx, const char *what, fc_status *st) {
    if (n < 4) return fc_fail(st, FC_DATA_LOSS, "%s block too short", what);
    uint32_t nr = fc_load_le32(b + n - 4);
    if (nr == 0 || nr > (n - 4) / 4)
        return fc_fail(st, FC_DATA_LOSS, "%s block has a bad restart count", what);
    const uint8_t *p = b, *end = b + n - 4 - 4 * (size_t)nr;
    it->key.len = 0;
    int first = 1;
    while (p < end) {
        uint64_t shared, unshared, vlen;
        if (fc_get_varint(&p, end, &shared) || fc_get_varint(&p, end, &unshared) ||
            fc_get_varint(&p, end, &vlen))
            return fc_fail(st, FC_DATA_LOSS, "%s block entry header is corrupt", what);
        if (shared > it->key.len || (first && shared) || unshared > (uint64_t)(end - p) ||
            vlen > (uint64_t)(end - p) - unshared)
            return fc_fail(st, FC_DATA_LOSS, "%s block entry lengths are corrupt", what);
        it->key.len = (size_t)shared;
        if (fc_buf_append(&it->key, p, (size_t)unshared))
            return fc_fail(st, FC_NOMEM, "out of memory");
        p += unshared;
        const uint8_t *val = p;
        p += vlen;
        first = 0;
        if (it->have_prev) {
            if (fc_key_compare(it->prev.p, it->prev.len, it->key.p, it->key.len) >= 0)
                return fc_fail(st, FC_DATA_LOSS, "index keys are not in strictly increasing order");
        }
        it->prev.len = 0;
        if (fc_buf_append(&it->prev, it->key.p, it->key.len))
            return fc_fail(st, FC_NOMEM, "out of memory");
        it->have_prev = 1;
        int r = visit(ctx, it->key.p, it->key.len, val, (size_t)vlen, st);
        if (r) return r;
    }
    return FC_OK;
}

int fc_table_iterate(const uint8_t *data, size_t len, fc_table_visit visit, void *ctx,
                     fc_status *st) {
    if (len < FC_TABLE_FOOTER_LEN)
        return fc_fail(st, FC_DATA_LOSS, "file is too short to be an sstable");
    const uint8_t *foot = data + len - FC_TABLE_FOOTER_LEN;
    if (fc_load_le32(foot + 40) != MAGIC_LO || fc_load_le32(foot + 44) != MAGIC_HI)
        return fc_fail(st, FC_DATA_LOSS, "not an sstable (bad magic number)");
    const uint8_t *h = foot, *hend = foot + 40;
    uint64_t moff, msize, ioff, isize;
    if (fc_get_varint(&h, hend, &moff) || fc_get_varint(&h, hend, &msize) ||
        fc_get_varint(&h, hend, &ioff) || fc_get_varint(&h, hend, &isize))
        return fc_fail(st, FC_DATA_LOSS, "corrupt sstable footer");
    const uint8_t *ib;
    size_t ilen;
    int r = load_block(data, len, ioff, isize, &ib, &ilen, "index", st);
    if (r) return r;
    /* Walk the index block by hand: each value is a data block handle. */
    if (ilen < 4) return fc_fail(st, FC_DATA_LOSS, "index block too short");
    uint32_t nr = fc_load_le32(ib + ilen - 4);
    if (nr == 0 || nr > (ilen - 4) / 4)
        return fc_fail(st, FC_DATA_LOSS, "index block has a bad restart count");
    const uint8_t *p = ib, *end = ib + ilen - 4 - 4 * (size_t)nr;
    iter_state it;
    memset(&it, 0, sizeof it);
    size_t ikeylen = 0;
    uint64_t next_off = 0;
    r = FC_OK;
    while (p < end && r == FC_OK) {
        uint64_t shared, unshared, vlen, off, size;
        if (fc_get_varint(&p, end, &shared) || fc_get_varint(&p, end, &unshared) ||
            fc_get_varint(&p, end, &vlen) || shared > ikeylen ||
            unshared > (uint64_t)(end - p) || vlen > (uint64_t)(end - p) - unshared) {
            r = fc_fail(st, FC_DATA_LOSS, "index block entry is corrupt");
            break;
        }
        ikeylen = (size_t)(shared + unshared);
        p += unshared;
        const uint8_t *hv = p, *hvend = p + vlen;
        p += vlen;
        if (fc_get_varint(&hv, hvend, &off) || fc_get_varint(&hv, hvend, &size)) {
            r = fc_fail(st, FC_DATA_LOSS, "corrupt block handle in index block");
            break;
        }
        if (off != next_off) {
            r = fc_fail(st, FC_DATA_LOSS, "data blocks overlap or are out of order");
            break;
        }
        const uint8_t *db;
        size_t dlen;
        r = load_block(data, len, off, size, &db, &dlen, "data", st);
        if (r == FC_OK) r = parse_block(db, dlen, &it, visit, ctx, "data", st);
        next_off = off + size + TRAILER;
    }
    fc_buf_free(&it.key);
    fc_buf_free(&it.prev);
    return r;
}
