/* Stable merge sort of keys held in an arena (no globals: thread-safe). */
#include "fastckpt.h"

#include <stdlib.h>
#include <string.h>

static int key_less(const uint8_t *arena, const uint32_t *off, const uint32_t *len, uint32_t a,
                    uint32_t b) {
    uint32_t m = len[a] < len[b] ? len[a] : len[b];
    int c = m ? memcmp(arena + off[a], arena + off[b], m) : 0;
    return c < 0 || (c == 0 && len[a] < len[b]);
}

int fc_sort_keys(const uint8_t *arena, const uint32_t *off, const uint32_t *len, size_t n,
                 uint32_t *order) {
    for (size_t i = 0; i < n; i++) order[i] = (uint32_t)i;
    size_t i = 1;
    while (i < n && !key_less(arena, off, len, order[i], order[i - 1])) i++;
    if (i >= n) return 0; /* already sorted: the common case */
    uint32_t *tmp = (uint32_t *)malloc(n * sizeof(uint32_t));
    if (!tmp) return -1;
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t a = lo, b = mid, k = lo;
            while (a < mid && b < hi)
                tmp[k++] = key_less(arena, off, len, order[b], order[a]) ? order[b++] : order[a++];
            while (a < mid) tmp[k++] = order[a++];
            while (b < hi) tmp[k++] = order[b++];
        }
        memcpy(order, tmp, n * sizeof(uint32_t));
    }
    free(tmp);
    return 0;
}
