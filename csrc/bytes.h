/* Little-endian loads and stores, and the one bytewise key order (LevelDB's
 * BytewiseComparator: memcmp, then the shorter key first). */
#ifndef FASTCKPT_BYTES_H
#define FASTCKPT_BYTES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline void fc_store_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static inline void fc_store_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint32_t fc_load_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t fc_load_le64(const uint8_t *p) {
    return (uint64_t)fc_load_le32(p) | (uint64_t)fc_load_le32(p + 4) << 32;
}

/* <0, 0, >0 as key a sorts before, equal to, after key b. */
static inline int fc_key_compare(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) {
    size_t m = alen < blen ? alen : blen;
    int c = m ? memcmp(a, b, m) : 0;
    return c ? c : (alen > blen) - (alen < blen);
}

#endif
