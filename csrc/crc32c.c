/* CRC32C (Castagnoli): SSE4.2 instruction in three interleaved streams when
 * the CPU has it, a slicing-by-8 table otherwise; chosen once at run time. */
#include "fastckpt.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <nmmintrin.h>
#define FC_HAVE_X86_CRC 1
#endif

#define POLY 0x82f63b78u

static uint32_t table8[8][256];
/* x^(2^k) mod P, reflected, k < 64. No "k & 31" wrap-around: that shortcut
 * assumes an irreducible polynomial (period 32); CRC32C's is not, and
 * lengths of 2^29 bytes and more then combine wrongly. */
static uint32_t x2n[64];
/* Shift operators for the interleaved streams: multiply a CRC register by
 * x^(8*STREAM) and x^(16*STREAM), one table per input byte. */
#define STREAM 2048
static uint32_t shift1[4][256], shift2[4][256];
static int hw_ok;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static uint32_t multmodp(uint32_t a, uint32_t b) {
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0) break;
        }
        m >>= 1;
        b = (b & 1) ? (b >> 1) ^ POLY : b >> 1;
    }
    return p;
}

/* x^(n * 2^k) mod P */
static uint32_t x2nmodp(uint64_t n, unsigned k) {
    uint32_t p = 1u << 31;
    while (n) {
        if (n & 1) p = multmodp(x2n[k], p);
        n >>= 1;
        k++;
    }
    return p;
}

static void build_shift(uint32_t t[4][256], uint32_t op) {
    for (int j = 0; j < 4; j++)
        for (uint32_t b = 0; b < 256; b++) t[j][b] = multmodp(op, b << (8 * j));
}

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table8[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (int i = 0; i < 256; i++)
            table8[t][i] = (table8[t - 1][i] >> 8) ^ table8[0][table8[t - 1][i] & 0xff];
    uint32_t p = 1u << 30; /* x^1 */
    x2n[0] = p;
    for (int k = 1; k < 64; k++) x2n[k] = p = multmodp(p, p);
    build_shift(shift1, x2nmodp(STREAM, 3));
    build_shift(shift2, x2nmodp(2 * STREAM, 3));
#ifdef FC_HAVE_X86_CRC
    __builtin_cpu_init();
    hw_ok = __builtin_cpu_supports("sse4.2");
#endif
}

static inline void ensure_init(void) { pthread_once(&init_once, crc_init); }

static inline uint32_t apply_shift(uint32_t t[4][256], uint32_t c) {
    return t[0][c & 0xff] ^ t[1][(c >> 8) & 0xff] ^ t[2][(c >> 16) & 0xff] ^
           t[3][c >> 24];
}

/* raw register (no pre/post inversion) */
static uint32_t crc_sw(uint32_t c, const uint8_t *p, size_t n) {
    while (n && ((uintptr_t)p & 7)) {
        c = (c >> 8) ^ table8[0][(c ^ *p++) & 0xff];
        n--;
    }
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        lo = __builtin_bswap32(lo);
        hi = __builtin_bswap32(hi);
#endif
        lo ^= c;
        c = table8[7][lo & 0xff] ^ table8[6][(lo >> 8) & 0xff] ^
            table8[5][(lo >> 16) & 0xff] ^ table8[4][lo >> 24] ^
            table8[3][hi & 0xff] ^ table8[2][(hi >> 8) & 0xff] ^
            table8[1][(hi >> 16) & 0xff] ^ table8[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ table8[0][(c ^ *p++) & 0xff];
    return c;
}

#ifdef FC_HAVE_X86_CRC
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t c0, const uint8_t *p,
                                                         size_t n) {
    uint64_t c = c0;
    while (n && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        n--;
    }
    while (n >= 3 * STREAM) {
        uint64_t a = c, b = 0, d = 0, va, vb, vd;
        const uint8_t *pa = p, *pb = p + STREAM, *pd = p + 2 * STREAM;
        for (size_t i = 0; i < STREAM; i += 8) {
            memcpy(&va, pa + i, 8);
            memcpy(&vb, pb + i, 8);
            memcpy(&vd, pd + i, 8);
            a = _mm_crc32_u64(a, va);
            b = _mm_crc32_u64(b, vb);
            d = _mm_crc32_u64(d, vd);
        }
        c = apply_shift(shift2, (uint32_t)a) ^ apply_shift(shift1, (uint32_t)b) ^
            (uint32_t)d;
        p += 3 * STREAM;
        n -= 3 * STREAM;
    }
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        n -= 8;
    }
    while (n--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

uint32_t fc_crc32c_extend(uint32_t crc, const void *data, size_t n) {
    ensure_init();
#ifdef FC_HAVE_X86_CRC
    if (hw_ok) return ~crc_hw(~crc, (const uint8_t *)data, n);
#endif
    return ~crc_sw(~crc, (const uint8_t *)data, n);
}

uint32_t fc_crc32c_extend_portable(uint32_t crc, const void *data, size_t n) {
    ensure_init();
    return ~crc_sw(~crc, (const uint8_t *)data, n);
}

uint32_t fc_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
    ensure_init();
    len_b &= (1ULL << 60) - 1; /* k = 3 + bit index stays below 64 (no buffer is 2^60 bytes) */
    return multmodp(x2nmodp(len_b, 3), crc_a) ^ crc_b;
}

int fc_crc32c_hw_available(void) {
    ensure_init();
    return hw_ok;
}
