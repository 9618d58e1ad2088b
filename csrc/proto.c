/* Varints and the protobuf messages of the bundle format, by hand:
 * BundleHeaderProto (+VersionDef), BundleEntryProto, TensorShapeProto,
 * TensorSliceProto. Fields are written in ascending number order and proto3
 * defaults are omitted, as TensorFlow's C++ serializer does. */
#include "fastckpt.h"

#include <string.h>

size_t fc_varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

size_t fc_put_varint(uint8_t *out, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

int fc_get_varint(const uint8_t **pp, const uint8_t *end, uint64_t *v) {
    const uint8_t *p = *pp;
    uint64_t r = 0;
    for (int i = 0; i < FC_MAX_VARINT64; i++) {
        if (p >= end) return -1;
        uint8_t b = *p++;
        if (i == 9 && b > 1) return -1; /* more than 64 bits */
        r |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *v = r;
            *pp = p;
            return 0;
        }
    }
    return -1;
}

/* Wire types, and the field numbers of tensor_bundle.proto (BundleHeaderProto,
 * BundleEntryProto), versions.proto, tensor_shape.proto and tensor_slice.proto. */
enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_LEN = 2, WIRE_FIXED32 = 5 };
enum { HEADER_NUM_SHARDS = 1, HEADER_ENDIANNESS = 2, HEADER_VERSION = 3 };
enum { VERSION_PRODUCER = 1, VERSION_MIN_CONSUMER = 2, VERSION_BAD_CONSUMERS = 3 };
enum { ENTRY_DTYPE = 1, ENTRY_SHAPE = 2, ENTRY_SHARD_ID = 3, ENTRY_OFFSET = 4, ENTRY_SIZE = 5,
       ENTRY_CRC32C = 6, ENTRY_SLICES = 7 };
enum { SHAPE_DIM = 2, SHAPE_UNKNOWN_RANK = 3, DIM_SIZE = 1 };
enum { SLICE_EXTENT = 1, EXTENT_START = 1, EXTENT_LENGTH = 2 };

/* ---- encoding ---------------------------------------------------------- */

/* Size of a varint field (tag + value); int32/int64 negatives take 10 bytes
 * as in protobuf. */
static size_t vfield_len(int64_t v) { return 1 + fc_varint_len((uint64_t)v); }
static size_t lfield_len(size_t body) { return 1 + fc_varint_len(body) + body; }

static uint8_t *put_vfield(uint8_t *p, unsigned field, int64_t v) {
    *p++ = (uint8_t)(field << 3 | WIRE_VARINT);
    return p + fc_put_varint(p, (uint64_t)v);
}

static uint8_t *put_ltag(uint8_t *p, unsigned field, size_t body) {
    *p++ = (uint8_t)(field << 3 | WIRE_LEN);
    return p + fc_put_varint(p, body);
}

static size_t dim_body(int64_t size) { return size ? vfield_len(size) : 0; }

static size_t shape_body(const fc_entry_view *e) {
    size_t n = 0;
    for (int32_t i = 0; i < e->rank; i++) n += lfield_len(dim_body(e->dims[i]));
    return n;
}

static size_t extent_body(const fc_extent *x) {
    size_t n = 0;
    if (x->length < 0) return 0; /* full dimension: empty Extent */
    if (x->start) n += vfield_len(x->start);
    n += vfield_len(x->length);  /* oneof: emitted even when 0 */
    return n;
}

static size_t slice_body(const fc_extent *xs, int32_t rank) {
    size_t n = 0;
    for (int32_t i = 0; i < rank; i++) n += lfield_len(extent_body(&xs[i]));
    return n;
}

int fc_encode_entry(fc_buf *out, const fc_entry_view *e, fc_status *st) {
    if (e->rank < 0 || e->rank > FC_MAX_RANK || e->num_slices < 0)
        return fc_fail(st, FC_INVALID, "entry rank %d or slice count %d out of range",
                       (int)e->rank, (int)e->num_slices);
    size_t shape = shape_body(e);
    size_t total = (e->dtype ? vfield_len(e->dtype) : 0) + lfield_len(shape) +
                   (e->shard_id ? vfield_len(e->shard_id) : 0) +
                   (e->offset ? vfield_len(e->offset) : 0) +
                   (e->size ? vfield_len(e->size) : 0) + (e->has_crc ? 5 : 0);
    for (int32_t s = 0; s < e->num_slices; s++)
        total += lfield_len(slice_body(e->extents + (size_t)s * e->rank, e->rank));
    if (fc_buf_reserve(out, total)) return fc_fail(st, FC_NOMEM, "out of memory");
    uint8_t *p = out->p + out->len;
    if (e->dtype) p = put_vfield(p, ENTRY_DTYPE, e->dtype);
    p = put_ltag(p, ENTRY_SHAPE, shape);
    for (int32_t i = 0; i < e->rank; i++) {
        p = put_ltag(p, SHAPE_DIM, dim_body(e->dims[i]));
        if (e->dims[i]) p = put_vfield(p, DIM_SIZE, e->dims[i]);
    }
    if (e->shard_id) p = put_vfield(p, ENTRY_SHARD_ID, e->shard_id);
    if (e->offset) p = put_vfield(p, ENTRY_OFFSET, e->offset);
    if (e->size) p = put_vfield(p, ENTRY_SIZE, e->size);
    if (e->has_crc) {
        *p++ = ENTRY_CRC32C << 3 | WIRE_FIXED32;
        fc_store_le32(p, e->crc32c);
        p += 4;
    }
    for (int32_t s = 0; s < e->num_slices; s++) {
        const fc_extent *xs = e->extents + (size_t)s * e->rank;
        p = put_ltag(p, ENTRY_SLICES, slice_body(xs, e->rank));
        for (int32_t i = 0; i < e->rank; i++) {
            p = put_ltag(p, SLICE_EXTENT, extent_body(&xs[i]));
            if (xs[i].length < 0) continue;
            if (xs[i].start) p = put_vfield(p, EXTENT_START, xs[i].start);
            p = put_vfield(p, EXTENT_LENGTH, xs[i].length);
        }
    }
    out->len = (size_t)(p - out->p);
    return FC_OK;
}

int fc_encode_header(fc_buf *out, const fc_header *h, fc_status *st) {
    size_t version = 0;
    if (h->producer) version += vfield_len(h->producer);
    if (h->min_consumer) version += vfield_len(h->min_consumer);
    if (h->bad_consumer_1) version += lfield_len(1);
    size_t total = (h->num_shards ? vfield_len(h->num_shards) : 0) +
                   (h->endianness ? vfield_len(h->endianness) : 0) +
                   (h->has_version ? lfield_len(version) : 0);
    if (fc_buf_reserve(out, total)) return fc_fail(st, FC_NOMEM, "out of memory");
    uint8_t *p = out->p + out->len;
    if (h->num_shards) p = put_vfield(p, HEADER_NUM_SHARDS, h->num_shards);
    if (h->endianness) p = put_vfield(p, HEADER_ENDIANNESS, h->endianness);
    if (h->has_version) {
        p = put_ltag(p, HEADER_VERSION, version);
        if (h->producer) p = put_vfield(p, VERSION_PRODUCER, h->producer);
        if (h->min_consumer) p = put_vfield(p, VERSION_MIN_CONSUMER, h->min_consumer);
        if (h->bad_consumer_1) {
            p = put_ltag(p, VERSION_BAD_CONSUMERS, 1);
            *p++ = 1;
        }
    }
    out->len = (size_t)(p - out->p);
    return FC_OK;
}

/* ---- decoding ---------------------------------------------------------- */

typedef struct {
    const uint8_t *p, *end;
} reader;

typedef struct {
    unsigned field;
    unsigned wire;
    uint64_t v;                 /* varint or fixed value */
    const uint8_t *body;        /* length-delimited body */
    size_t body_len;
} pfield;

/* Next field of a message; 1 on a field, 0 at the end, -1 when corrupt. */
static int next_field(reader *r, pfield *f) {
    f->v = 0;
    f->body = NULL;
    f->body_len = 0;
    if (r->p >= r->end) return 0;
    uint64_t tag;
    if (fc_get_varint(&r->p, r->end, &tag)) return -1;
    f->field = (unsigned)(tag >> 3);
    f->wire = (unsigned)(tag & 7);
    if (tag >> 32 || f->field == 0) return -1;
    switch (f->wire) {
    case WIRE_VARINT:
        return fc_get_varint(&r->p, r->end, &f->v) ? -1 : 1;
    case WIRE_FIXED64:
        if (r->end - r->p < 8) return -1;
        f->v = fc_load_le64(r->p);
        r->p += 8;
        return 1;
    case WIRE_FIXED32:
        if (r->end - r->p < 4) return -1;
        f->v = fc_load_le32(r->p);
        r->p += 4;
        return 1;
    case WIRE_LEN: {
        uint64_t len;
        if (fc_get_varint(&r->p, r->end, &len)) return -1;
        if (len > (uint64_t)(r->end - r->p)) return -1;
        f->body = r->p;
        f->body_len = (size_t)len;
        r->p += len;
        return 1;
    }
    default:
        return -1; /* groups (3, 4) never appear in these messages */
    }
}

/* A varint field as int32 the protobuf way (truncating a 64-bit value). */
static int32_t as_i32(uint64_t v) { return (int32_t)(uint32_t)v; }

static int decode_version(const uint8_t *p, size_t n, fc_header *h) {
    reader r = {p, p + n};
    pfield f;
    int k;
    while ((k = next_field(&r, &f)) == 1) {
        if (f.field == VERSION_PRODUCER && f.wire == WIRE_VARINT) h->producer = as_i32(f.v);
        else if (f.field == VERSION_MIN_CONSUMER && f.wire == WIRE_VARINT) h->min_consumer = as_i32(f.v);
        else if (f.field == VERSION_BAD_CONSUMERS && f.wire == WIRE_VARINT) h->bad_consumer_1 |= as_i32(f.v) == 1;
        else if (f.field == VERSION_BAD_CONSUMERS && f.wire == WIRE_LEN) {  /* packed */
            reader pr = {f.body, f.body + f.body_len};
            while (pr.p < pr.end) {
                uint64_t v;
                if (fc_get_varint(&pr.p, pr.end, &v)) return -1;
                h->bad_consumer_1 |= as_i32(v) == 1;
            }
        }
    }
    return k;
}

int fc_decode_header(const uint8_t *p, size_t n, fc_header *h, fc_status *st) {
    memset(h, 0, sizeof *h);
    reader r = {p, p + n};
    pfield f;
    int k;
    while ((k = next_field(&r, &f)) == 1) {
        if (f.field == HEADER_NUM_SHARDS && f.wire == WIRE_VARINT) h->num_shards = as_i32(f.v);
        else if (f.field == HEADER_ENDIANNESS && f.wire == WIRE_VARINT) h->endianness = as_i32(f.v);
        else if (f.field == HEADER_VERSION && f.wire == WIRE_LEN) {
            h->has_version = 1;
            if (decode_version(f.body, f.body_len, h) < 0) { k = -1; break; }
        }
    }
    if (k < 0) return fc_fail(st, FC_DATA_LOSS, "corrupt bundle header");
    return FC_OK;
}

/* ---- entry decoding into the index arenas -------------------------------- */

static int decode_shape(fc_index *idx, const uint8_t *p, size_t n, fc_entry *e) {
    reader r = {p, p + n};
    pfield f;
    int k;
    e->dims_off = (uint32_t)idx->dims_len;
    e->rank = 0;
    while ((k = next_field(&r, &f)) == 1) {
        if (f.field == SHAPE_UNKNOWN_RANK && f.wire == WIRE_VARINT && f.v) return -2;
        if (f.field != SHAPE_DIM || f.wire != WIRE_LEN) continue;
        if (e->rank >= FC_MAX_RANK) return -3;
        int64_t size = 0;
        reader dr = {f.body, f.body + f.body_len};
        pfield df;
        int dk;
        while ((dk = next_field(&dr, &df)) == 1)
            if (df.field == DIM_SIZE && df.wire == WIRE_VARINT) size = (int64_t)df.v;
        if (dk < 0) return -1;
        if (fc_grow((void **)&idx->dims, &idx->dims_cap, idx->dims_len + 1, sizeof(int64_t)))
            return -4;
        idx->dims[idx->dims_len++] = size;
        e->rank++;
    }
    return k;
}

static int decode_slice(fc_index *idx, const uint8_t *p, size_t n, int32_t *count) {
    reader r = {p, p + n};
    pfield f;
    int k;
    *count = 0;
    while ((k = next_field(&r, &f)) == 1) {
        if (f.field != SLICE_EXTENT || f.wire != WIRE_LEN) continue;
        fc_extent x = {0, -1};
        int has_len = 0;
        reader xr = {f.body, f.body + f.body_len};
        pfield xf;
        int xk;
        while ((xk = next_field(&xr, &xf)) == 1) {
            if (xf.field == EXTENT_START && xf.wire == WIRE_VARINT) x.start = (int64_t)xf.v;
            else if (xf.field == EXTENT_LENGTH && xf.wire == WIRE_VARINT) {
                x.length = (int64_t)xf.v;
                has_len = 1;
            }
        }
        if (xk < 0) return -1;
        if (x.start < 0 || (has_len && x.length < 0)) return -1;
        if (!has_len && x.start != 0) return -1;
        if (fc_grow((void **)&idx->extents, &idx->ext_cap, idx->ext_len + 1, sizeof(fc_extent)))
            return -4;
        idx->extents[idx->ext_len++] = x;
        (*count)++;
    }
    return k;
}

/* Decodes one BundleEntryProto, appending its dims and extents to the
 * index arenas. Returns 0, or fails with a message naming nothing (the
 * caller adds the key). */
int fc_decode_entry_into(fc_index *idx, const uint8_t *p, size_t n, fc_entry *e,
                         fc_status *st) {
    memset(e, 0, sizeof *e);
    e->dims_off = (uint32_t)idx->dims_len;
    e->extents_off = (uint32_t)idx->ext_len;
    reader r = {p, p + n};
    pfield f;
    int k, have_shape = 0, slice_rank = -1;
    while ((k = next_field(&r, &f)) == 1) {
        if (f.wire == WIRE_VARINT && f.field == ENTRY_DTYPE) e->dtype = as_i32(f.v);
        else if (f.wire == WIRE_LEN && f.field == ENTRY_SHAPE) {
            if (have_shape) return fc_fail(st, FC_DATA_LOSS, "entry has two shapes");
            int s = decode_shape(idx, f.body, f.body_len, e);
            if (s == -4) return fc_fail(st, FC_NOMEM, "out of memory");
            if (s == -3) return fc_fail(st, FC_DATA_LOSS, "rank over %d", FC_MAX_RANK);
            if (s == -2) return fc_fail(st, FC_DATA_LOSS, "shape of unknown rank");
            if (s < 0) return fc_fail(st, FC_DATA_LOSS, "corrupt shape");
            have_shape = 1;
        } else if (f.wire == WIRE_VARINT && f.field == ENTRY_SHARD_ID) e->shard_id = as_i32(f.v);
        else if (f.wire == WIRE_VARINT && f.field == ENTRY_OFFSET) e->offset = (int64_t)f.v;
        else if (f.wire == WIRE_VARINT && f.field == ENTRY_SIZE) e->size = (int64_t)f.v;
        else if (f.wire == WIRE_FIXED32 && f.field == ENTRY_CRC32C) {
            e->crc32c = (uint32_t)f.v;
            e->has_crc = 1;
        } else if (f.wire == WIRE_LEN && f.field == ENTRY_SLICES) {
            int32_t cnt;
            int s = decode_slice(idx, f.body, f.body_len, &cnt);
            if (s == -4) return fc_fail(st, FC_NOMEM, "out of memory");
            if (s < 0) return fc_fail(st, FC_DATA_LOSS, "corrupt slice spec");
            if (slice_rank >= 0 && cnt != slice_rank)
                return fc_fail(st, FC_DATA_LOSS, "slices of different ranks");
            slice_rank = cnt;
            e->num_slices++;
        }
    }
    if (k < 0) return fc_fail(st, FC_DATA_LOSS, "corrupt entry");
    if (e->num_slices && slice_rank != e->rank)
        return fc_fail(st, FC_DATA_LOSS, "slice rank %d differs from tensor rank %d",
                       (int)slice_rank, (int)e->rank);
    return FC_OK;
}
