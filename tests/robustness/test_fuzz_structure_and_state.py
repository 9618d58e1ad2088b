"""Fuzzing the structure record and the state file: nothing a damaged or
hostile file says may crash, raise a non-fastckpt error, restore different
data silently, or make a save delete files it does not own."""

import json
import os
import shutil
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

import fastckpt
from fastckpt.structure.tree import unflatten
from fastckpt.structure.record import STRUCTURE_KEY, parse_structure_record

EXAMPLES = int(os.environ.get("FASTCKPT_FUZZ_EXAMPLES", "1500"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

NESTED = {"layers": [{"w": np.arange(6.0).reshape(2, 3), "b": np.zeros(3, np.float32)},
                     {"w": np.ones((3, 1)), "b": np.ones(1, np.float32)}],
          "step": 7, "opt": ({"m": np.arange(3, dtype=np.int64)}, 0.5)}


def test_every_bit_flip_of_the_structure_record_is_caught(tmp_path, counts):
    """The attack that found 170 silent wrong restores in 3,440 flips of the
    old .meta file, against the record inside the bundle."""
    p = fastckpt.save(NESTED, str(tmp_path / "c"))
    with fastckpt.load_checkpoint(p) as r:
        _, _, _, offset, size, _, _ = r._entry(STRUCTURE_KEY)[1]
    data = p + ".data-00000-of-00001"
    pristine = open(data, "rb").read()
    flips = 0
    for byte in range(offset, offset + size):
        for bit in range(8):
            damaged = bytearray(pristine)
            damaged[byte] ^= 1 << bit
            with open(data, "wb") as f:
                f.write(damaged)
            try:
                fastckpt.restore(p)
                raise AssertionError(f"flip of bit {bit} of byte {byte} restored without error")
            except fastckpt.DataLossError:
                pass
            flips += 1
    assert not fastckpt.verify_checkpoint(p).ok
    counts["structure record bit flips, all caught"] = flips


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["leaf", "dict", "list", "tuple", "a", "b",
                                                                          "python", "int", ""]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["leaf", "dict", "list", "tuple", "python", "format", "version", "structure", "leaves",
                         "dtype", "shape", "a", "b"]), children, max_size=4),
    max_leaves=20)

SHAPES = {"a": (2,), "b": ()}
DTYPES = {"a": np.dtype(np.float64), "b": np.dtype(np.int64)}
LEAVES = {"a": np.zeros(2), "b": np.zeros((), np.int64)}


@fuzz
@given(json_values, json_values)
def test_structure_record_parser_on_hostile_json(counts, structure, leaves):
    counts["fuzz: hostile structure records"] = counts.get("fuzz: hostile structure records", 0) + 1
    record = {"format": "fastckpt.structure", "version": 1, "structure": structure, "leaves": leaves}
    try:
        checked = parse_structure_record(json.dumps(record).encode(), SHAPES, DTYPES, "fuzz")
    except fastckpt.CheckpointError:
        return
    unflatten(checked["structure"], LEAVES)  # a record that passes must rebuild cleanly


@fuzz
@given(st.binary(max_size=300))
def test_structure_record_parser_on_random_bytes(counts, raw):
    counts["fuzz: random structure records"] = counts.get("fuzz: random structure records", 0) + 1
    try:
        parse_structure_record(raw, SHAPES, DTYPES, "fuzz")
    except fastckpt.CheckpointError:
        pass


STATE_WORDS = st.sampled_from([
    "model_checkpoint_path", "all_model_checkpoint_paths", "all_model_checkpoint_timestamps",
    "last_preserved_timestamp", ":", '"ckpt-1"', '"../victim/x"', '"/etc/x"', '"./ckpt-1"', '"ckpt-2"', "1.5",
    "nan", "-inf", "# fastckpt-pending:", "# fastckpt-deleting:", '"\\x00"', '"\\777"', "\n", " ", "{", "'a'",
    '".fcsave-0123456789abcdef"', "#", "\\"])


@settings(max_examples=max(1, EXAMPLES // 3), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(STATE_WORDS, max_size=30))
def test_state_file_from_hostile_tokens(counts, words):
    """Parse, then save into the directory: only fastckpt errors, and no
    file outside the directory is ever touched."""
    counts["fuzz: hostile state files"] = counts.get("fuzz: hostile state files", 0) + 1
    root = tempfile.mkdtemp()
    try:
        d, victim = os.path.join(root, "run"), os.path.join(root, "victim")
        os.makedirs(d)
        fastckpt.write_bundle(os.path.join(victim, "x"), {"v": np.zeros(1)})
        fastckpt.write_bundle(os.path.join(d, "ckpt-1"), {"v": np.zeros(1)})
        with open(os.path.join(d, "checkpoint"), "w") as f:
            f.write(" ".join(words))
        try:
            fastckpt.get_checkpoint_state(d)
        except fastckpt.CheckpointError:
            pass
        fastckpt.Saver(max_to_keep=1).save({"v": np.ones(1)}, os.path.join(d, "ckpt"), global_step=3)
        assert sorted(os.listdir(victim)) == ["x.data-00000-of-00001", "x.index"]
        assert fastckpt.latest_checkpoint(d) == os.path.join(d, "ckpt-3")
    finally:
        shutil.rmtree(root)
