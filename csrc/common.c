/* Status and growable buffers shared by the core. */
#include "fastckpt.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fc_status_clear(fc_status *st) {
    st->code = FC_OK;
    st->err_no = 0;
    st->item = -1;
    st->msg[0] = '\0';
}

int fc_fail(fc_status *st, int code, const char *fmt, ...) {
    va_list ap;
    st->code = code;
    va_start(ap, fmt);
    vsnprintf(st->msg, sizeof st->msg, fmt, ap);
    va_end(ap);
    return code;
}

int fc_buf_reserve(fc_buf *b, size_t extra) {
    if (extra > SIZE_MAX - b->len) return -1;
    size_t need = b->len + extra;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    uint8_t *p = (uint8_t *)realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

int fc_buf_append(fc_buf *b, const void *data, size_t n) {
    if (n == 0) return 0;
    if (fc_buf_reserve(b, n)) return -1;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

void fc_buf_free(fc_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

int fc_grow(void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 2) return -1;
        c *= 2;
    }
    if (c > SIZE_MAX / elem) return -1;
    void *p = realloc(*arr, c * elem);
    if (!p) return -1;
    *arr = p;
    *cap = c;
    return 0;
}
