/* DT_STRING payloads:
 *   varint64 len[0..n) | fixed32 mask(C1) | bytes elem[0] .. elem[n-1]
 * C1 = crc32c over each length as a 4-byte (or, over 2^32-1, 8-byte) native
 * integer; the entry CRC continues C1 over the 4 stored checksum bytes and
 * then the string bytes. */
#include "fastckpt.h"

#include <string.h>

static uint32_t extend_len(uint32_t crc, uint64_t len, int big_endian) {
    uint8_t b[8];
    int w = len <= 0xffffffffu ? 4 : 8;
    for (int i = 0; i < w; i++) {
        int shift = big_endian ? 8 * (w - 1 - i) : 8 * i;
        b[i] = (uint8_t)(len >> shift);
    }
    return fc_crc32c_extend(crc, b, (size_t)w);
}

int fc_string_payload_size(const uint64_t *lens, size_t n, uint64_t *size, fc_status *st) {
    uint64_t total = 4;
    for (size_t i = 0; i < n; i++) {
        uint64_t add = fc_varint_len(lens[i]) + lens[i];
        if (add < lens[i] || total > UINT64_MAX - add)
            return fc_fail(st, FC_INVALID, "string tensor too large");
        total += add;
    }
    *size = total;
    return FC_OK;
}

int fc_string_encode(const uint8_t *const *ptrs, const uint64_t *lens, size_t n, uint8_t *out,
                     uint64_t out_len, uint32_t *crc, fc_status *st) {
    uint64_t need = 0;
    int r = fc_string_payload_size(lens, n, &need, st);
    if (r) return r;
    if (need != out_len) return fc_fail(st, FC_INVALID, "string payload buffer has the wrong size");
    uint8_t *p = out;
    uint32_t c = 0;
    for (size_t i = 0; i < n; i++) {
        p += fc_put_varint(p, lens[i]);
        c = extend_len(c, lens[i], 0);
    }
    uint32_t m = fc_crc_mask(c);
    fc_store_le32(p, m);
    c = fc_crc32c_extend(c, p, 4);
    p += 4;
    for (size_t i = 0; i < n; i++) {
        if (lens[i]) {
            memcpy(p, ptrs[i], (size_t)lens[i]);
            c = fc_crc32c_extend(c, p, (size_t)lens[i]);
            p += lens[i];
        }
    }
    *crc = c;
    return FC_OK;
}

int fc_string_decode(const uint8_t *payload, uint64_t size, uint64_t n, uint64_t *lens,
                     uint64_t *data_off, uint32_t masked_crc, int verify, int big_endian,
                     fc_status *st) {
    const uint8_t *p = payload, *end = payload + size;
    uint32_t c = 0;
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len;
        if (fc_get_varint(&p, end, &len))
            return fc_fail(st, FC_DATA_LOSS, "string lengths are truncated or corrupt");
        if (len > size || total > size - len)
            return fc_fail(st, FC_DATA_LOSS, "string lengths exceed the payload size");
        if (lens) lens[i] = len;
        total += len;
        c = extend_len(c, len, big_endian);
    }
    if (end - p < 4) return fc_fail(st, FC_DATA_LOSS, "string payload truncated before its length checksum");
    uint32_t stored = 0;
    for (int k = 0; k < 4; k++) {
        int shift = big_endian ? 8 * (3 - k) : 8 * k;
        stored |= (uint32_t)p[k] << shift;
    }
    if (stored != fc_crc_mask(c))
        return fc_fail(st, FC_DATA_LOSS, "the length checksum does not match: stored %u vs. calculated %u",
                       stored, fc_crc_mask(c));
    c = fc_crc32c_extend(c, p, 4);
    p += 4;
    if ((uint64_t)(end - p) != total)
        return fc_fail(st, FC_DATA_LOSS, "string payload is %llu bytes, the lengths need %llu",
                       (unsigned long long)(end - p), (unsigned long long)total);
    *data_off = (uint64_t)(p - payload);
    if (verify) {
        c = fc_crc32c_extend(c, p, (size_t)total);
        if (fc_crc_mask(c) != masked_crc)
            return fc_fail(st, FC_DATA_LOSS, "checksum does not match: stored %u vs. calculated %u",
                           masked_crc, fc_crc_mask(c));
    }
    return FC_OK;
}
