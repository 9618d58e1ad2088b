"""collective.merge_records: the one index of a many-process bundle --
records of every process merged in key order under one header, and a key
two processes both wrote refused."""

import pytest

import fastckpt
from fastckpt import _core
from fastckpt.collective import merge_records


def _entry(shard, offset, size=8):
    return _core.encode_entry(1, (size // 4,), shard, offset, size, 0)


def test_records_of_every_process_merge_in_key_order():
    records = [[(b"a", _entry(0, 0)), (b"c", _entry(0, 8))], [(b"b", _entry(1, 0))], []]
    index = _core.Index(merge_records(records, {}), "merged.index")
    assert index.num_shards == 3
    assert [index.key(i) for i in range(len(index))] == [b"a", b"b", b"c"]
    assert index.entry(index.find(b"b")).shard == 1 and index.entry(index.find(b"c")).offset == 8


def test_a_tensor_two_processes_wrote_is_refused():
    records = [[(b"a", _entry(0, 0)), (b"w", _entry(0, 8))], [(b"w", _entry(1, 0))]]
    with pytest.raises(fastckpt.InvalidArgumentError, match="two processes wrote tensor 'w'"):
        merge_records(records, {})
