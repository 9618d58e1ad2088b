/* A parsed .index: header plus one fc_entry per key, with keys, dims and
 * slice extents in arenas. Every number from the file is checked here,
 * before any caller sizes an allocation from it. */
#include "fastckpt.h"

#include <stdlib.h>
#include <string.h>


/* Bytes per element; 0 for variable-width, -1 for unknown. */
int fc_dtype_size(int32_t dtype) {
    switch (dtype) {
    case FC_DT_FLOAT: case FC_DT_INT32: case FC_DT_QINT32: case FC_DT_UINT32: return 4;
    case FC_DT_DOUBLE: case FC_DT_COMPLEX64: case FC_DT_INT64: case FC_DT_UINT64: return 8;
    case FC_DT_UINT8: case FC_DT_INT8: case FC_DT_BOOL: case FC_DT_QINT8: case FC_DT_QUINT8: return 1;
    case FC_DT_INT16: case FC_DT_BFLOAT16: case FC_DT_QINT16: case FC_DT_QUINT16: case FC_DT_UINT16:
    case FC_DT_HALF: return 2;
    case FC_DT_COMPLEX128: return 16;
    case FC_DT_FLOAT8_E5M2: case FC_DT_FLOAT8_E4M3FN: case FC_DT_FLOAT8_E4M3FNUZ:
    case FC_DT_FLOAT8_E4M3B11FNUZ: case FC_DT_FLOAT8_E5M2FNUZ: return 1;
    case FC_DT_INT4: case FC_DT_UINT4: case FC_DT_INT2: case FC_DT_UINT2:
    case FC_DT_FLOAT4_E2M1FN: return 1; /* one element per byte, as TensorFlow stores them */
    case FC_DT_STRING: case FC_DT_VARIANT: return 0;
    default: return -1;
    }
}

static int check_entry(const fc_index *idx, fc_entry *e, fc_status *st) {
    const int64_t *dims = idx->dims + e->dims_off;
    int64_t nelem = 1;
    for (int32_t i = 0; i < e->rank; i++) {
        if (dims[i] < 0) return fc_fail(st, FC_DATA_LOSS, "negative dimension %lld", (long long)dims[i]);
        if (dims[i] && nelem > INT64_MAX / dims[i])
            return fc_fail(st, FC_DATA_LOSS, "element count overflows");
        nelem *= dims[i];
    }
    e->num_elements = nelem;
    int w = fc_dtype_size(e->dtype);
    if (w < 0) return fc_fail(st, FC_UNSUPPORTED, "unknown dtype enum %d", (int)e->dtype);
    /* An array of this shape must be representable even when empty: numpy
     * multiplies max(dim, 1) and the element size without overflow. */
    int64_t span = w > 0 ? w : 8;
    for (int32_t i = 0; i < e->rank; i++) {
        int64_t d = dims[i] ? dims[i] : 1;
        if (span > INT64_MAX / d)
            return fc_fail(st, FC_DATA_LOSS, "shape too large: its dimensions multiply past 2**63 bytes");
        span *= d;
    }
    if (e->num_slices) {
        const fc_extent *x = idx->extents + e->extents_off;
        for (int32_t s = 0; s < e->num_slices; s++)
            for (int32_t d = 0; d < e->rank; d++, x++)
                if (x->length >= 0 && (x->start > dims[d] || x->length > dims[d] - x->start))
                    return fc_fail(st, FC_DATA_LOSS, "slice extends past the tensor's shape");
        return FC_OK; /* the full-tensor entry has no payload of its own */
    }
    if (e->shard_id < 0 || e->shard_id >= idx->header.num_shards)
        return fc_fail(st, FC_DATA_LOSS, "shard id %d outside 0..%d", (int)e->shard_id,
                       (int)idx->header.num_shards - 1);
    if (e->offset < 0 || e->size < 0 || e->offset > INT64_MAX - e->size)
        return fc_fail(st, FC_DATA_LOSS, "offset %lld / size %lld out of range",
                       (long long)e->offset, (long long)e->size);
    if (w > 0 && idx->header.min_consumer == FC_ZSTD_MIN_CONSUMER) {
        /* a compressed bundle: a frame (checked when read) for every non-empty tensor */
        if (nelem > INT64_MAX / w)
            return fc_fail(st, FC_DATA_LOSS, "element count overflows");
        if (nelem * w == 0 ? e->size != 0 : e->size < FC_ZFRAME_HEADER)
            return fc_fail(st, FC_DATA_LOSS, "invalid size in bundle entry: stored size %lld for a compressed "
                           "payload of %lld bytes", (long long)e->size, (long long)(nelem * w));
    } else if (w > 0) {
        if (nelem > INT64_MAX / w || e->size != nelem * w)
            return fc_fail(st, FC_DATA_LOSS,
                           "invalid size in bundle entry: stored size %lld; expected size %lld",
                           (long long)e->size, (long long)(nelem <= INT64_MAX / w ? nelem * w : -1));
    } else if (e->dtype == FC_DT_STRING && nelem > 0 && e->size < nelem + 4) {
        return fc_fail(st, FC_DATA_LOSS, "string payload of %lld bytes cannot hold %lld strings",
                       (long long)e->size, (long long)nelem);
    }
    return FC_OK;
}

static int visit_entry(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val,
                       size_t vlen, fc_status *st) {
    fc_index *idx = (fc_index *)ctx;
    if (!idx->have_header) {
        if (klen != 0)
            return fc_fail(st, FC_DATA_LOSS, "index has no header entry (first key is not empty)");
        int r = fc_decode_header(val, vlen, &idx->header, st);
        if (r) return r;
        idx->have_header = 1;
        if (idx->header.num_shards <= 0)
            return fc_fail(st, FC_DATA_LOSS, "header num_shards %d is not positive",
                           (int)idx->header.num_shards);
        if (idx->header.endianness != 0 && idx->header.endianness != 1)
            return fc_fail(st, FC_DATA_LOSS, "header endianness %d unknown",
                           (int)idx->header.endianness);
        /* refused as TensorFlow's CheckVersions refuses them: InvalidArgument */
        if (idx->header.producer < 0)
            return fc_fail(st, FC_INVALID, "checkpoint producer version %d below min producer 0",
                           (int)idx->header.producer);
        if (idx->header.min_consumer > 1 && idx->header.min_consumer != FC_ZSTD_MIN_CONSUMER)
            return fc_fail(st, FC_INVALID,
                           "checkpoint min consumer version %d above current version 1",
                           (int)idx->header.min_consumer);
        if (idx->header.bad_consumer_1)
            return fc_fail(st, FC_INVALID, "checkpoint disallows consumer version 1");
        return FC_OK;
    }
    if (klen > UINT32_MAX || idx->keys_len > UINT32_MAX - klen)
        return fc_fail(st, FC_DATA_LOSS, "index keys too large");
    if (fc_grow((void **)&idx->entries, &idx->cap, idx->n + 1, sizeof(fc_entry)) ||
        fc_grow((void **)&idx->keys, &idx->keys_cap, idx->keys_len + klen + 1, 1))
        return fc_fail(st, FC_NOMEM, "out of memory");
    fc_entry *e = &idx->entries[idx->n];
    int r = fc_decode_entry_into(idx, val, vlen, e, st);
    if (!r) r = check_entry(idx, e, st);
    if (r) {
        st->item = (int64_t)idx->n;
        return r;
    }
    e->key_off = (uint32_t)idx->keys_len;
    e->key_len = (uint32_t)klen;
    if (klen) memcpy(idx->keys + idx->keys_len, key, klen);
    idx->keys_len += klen;
    idx->n++;
    return FC_OK;
}

int fc_index_parse(fc_index *idx, const uint8_t *data, size_t len, fc_status *st) {
    memset(idx, 0, sizeof *idx);
    int r = fc_table_iterate(data, len, visit_entry, idx, st);
    if (r == FC_OK && !idx->have_header)
        r = fc_fail(st, FC_DATA_LOSS, "index has no header entry");
    if (r) fc_index_free(idx);
    return r;
}

void fc_index_free(fc_index *idx) {
    free(idx->entries);
    free(idx->keys);
    free(idx->dims);
    free(idx->extents);
    memset(idx, 0, sizeof *idx);
}

int64_t fc_index_find(const fc_index *idx, const uint8_t *key, size_t klen) {
    size_t lo = 0, hi = idx->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const fc_entry *e = &idx->entries[mid];
        int c = fc_key_compare(idx->keys + e->key_off, e->key_len, key, klen);
        if (c == 0) return (int64_t)mid;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}
