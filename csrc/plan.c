/* The write plan, made once for every write path: where each tensor goes
 * (shard, offset, alignment), and the .index built from the written plan. */
#include "fastckpt.h"

#include <stdlib.h>
#include <string.h>

int fc_plan_layout(const uint64_t *sizes, size_t n, int32_t num_shards, uint64_t alignment,
                   int32_t *shards, uint64_t *offsets, uint64_t *shard_ends, fc_status *st) {
    if (num_shards < 1 || alignment < 1)
        return fc_fail(st, FC_INVALID, "num_shards and alignment must be positive");
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (total > UINT64_MAX / 4 - sizes[i]) return fc_fail(st, FC_INVALID, "tensors too large");
        total += sizes[i];
    }
    memset(shard_ends, 0, (size_t)num_shards * sizeof(uint64_t));
    uint64_t cum = 0;
    for (size_t i = 0; i < n; i++) {
        /* contiguous runs of about equal bytes: a tensor goes to the shard its middle falls in */
        uint64_t s = num_shards == 1 ? 0 : ((2 * cum + sizes[i]) * (uint64_t)num_shards) / (2 * (total ? total : 1));
        if (s > (uint64_t)num_shards - 1) s = (uint64_t)num_shards - 1;
        cum += sizes[i];
        shards[i] = (int32_t)s;
        offsets[i] = shard_ends[s];
        uint64_t end = shard_ends[s] + sizes[i];
        if (end < shard_ends[s] || end > UINT64_MAX - alignment) return fc_fail(st, FC_INVALID, "offsets overflow");
        shard_ends[s] = (end + alignment - 1) / alignment * alignment;
    }
    return FC_OK;
}

int fc_index_build(const fc_header *h, const uint8_t *keys, const uint32_t *key_off,
                   const uint32_t *key_len, const fc_entry_view *entries, size_t n,
                   fc_table_builder *tb, const uint8_t **out, size_t *out_len, int64_t *duplicate,
                   fc_status *st) {
    *duplicate = -1;
    if (n > UINT32_MAX) return fc_fail(st, FC_INVALID, "too many tensors");
    uint32_t *order = (uint32_t *)malloc((n ? n : 1) * sizeof(uint32_t));
    fc_buf val = {0};
    int rc = FC_OK;
    if (!order || fc_sort_keys(keys, key_off, key_len, n, order)) {
        rc = fc_fail(st, FC_NOMEM, "out of memory");
        goto done;
    }
    static const uint8_t empty_key = 0;
    rc = fc_encode_header(&val, h, st);
    if (!rc) rc = fc_table_add(tb, &empty_key, 0, val.p, val.len, st);
    for (size_t k = 0; !rc && k < n; k++) {
        uint32_t i = order[k];
        uint32_t prev = k ? order[k - 1] : 0;
        if (k && key_len[i] == key_len[prev] &&
            fc_key_compare(keys + key_off[i], key_len[i], keys + key_off[prev], key_len[prev]) == 0) {
            *duplicate = (int64_t)i; /* two names with the same UTF-8 bytes */
            rc = fc_fail(st, FC_INVALID, "duplicate tensor name");
            break;
        }
        val.len = 0;
        rc = fc_encode_entry(&val, &entries[i], st);
        if (!rc) rc = fc_table_add(tb, keys + key_off[i], key_len[i], val.p, val.len, st);
        if (rc && st->item < 0) st->item = (int64_t)i;
    }
    if (!rc) rc = fc_table_finish(tb, out, out_len, st);
done:
    free(order);
    fc_buf_free(&val);
    return rc;
}
