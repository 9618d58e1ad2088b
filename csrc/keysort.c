/* Stable merge sorts without globals (thread-safe): keys held in an arena,
 * and any index array by a caller's order. */
#include "fastckpt.h"

#include <stdlib.h>
#include <string.h>

int fc_sort_indices(size_t *order, size_t n, int (*less)(const void *ctx, size_t a, size_t b),
                    const void *ctx) {
    size_t i = 1;
    while (i < n && !less(ctx, order[i], order[i - 1])) i++;
    if (i >= n) return 0; /* already sorted: the common case */
    size_t *tmp = (size_t *)malloc(n * sizeof(size_t));
    if (!tmp) return -1;
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t a = lo, b = mid, k = lo;
            while (a < mid && b < hi) tmp[k++] = less(ctx, order[b], order[a]) ? order[b++] : order[a++];
            while (a < mid) tmp[k++] = order[a++];
            while (b < hi) tmp[k++] = order[b++];
        }
        memcpy(order, tmp, n * sizeof(size_t));
    }
    free(tmp);
    return 0;
}

typedef struct {
    const uint8_t *arena;
    const uint32_t *off, *len;
} key_arena;

static int key_less(const void *ctx, size_t a, size_t b) {
    const key_arena *k = (const key_arena *)ctx;
    return fc_key_compare(k->arena + k->off[a], k->len[a], k->arena + k->off[b], k->len[b]) < 0;
}

int fc_sort_keys(const uint8_t *arena, const uint32_t *off, const uint32_t *len, size_t n,
                 uint32_t *order) {
    size_t i = 1;
    while (i < n && fc_key_compare(arena + off[i - 1], len[i - 1], arena + off[i], len[i]) <= 0) i++;
    if (i >= n) { /* already in order: the common case */
        for (size_t k = 0; k < n; k++) order[k] = (uint32_t)k;
        return 0;
    }
    size_t *idx = (size_t *)malloc((n ? n : 1) * sizeof(size_t));
    if (!idx) return -1;
    for (size_t i = 0; i < n; i++) idx[i] = i;
    key_arena k = {arena, off, len};
    int rc = fc_sort_indices(idx, n, key_less, &k);
    for (size_t i = 0; i < n; i++) order[i] = (uint32_t)idx[i];
    free(idx);
    return rc;
}
