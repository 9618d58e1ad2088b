"""The TrackableObjectGraph codec: TensorFlow's bytes parse and re-encode
to the same bytes; random graphs round-trip; damaged bytes raise
DataLossError and nothing else."""

import os

import numpy as np
from hypothesis import given, strategies as st

import fastckpt
from fastckpt.structure.objectgraph import (OBJECT_GRAPH_KEY, TrackableObject, encode_object_graph, object_paths,
                                  parse_object_graph)


def _golden_graph(data_dir, name="tf2_checkpoint"):
    return fastckpt.load_checkpoint(os.path.join(data_dir, name)).get_tensor(OBJECT_GRAPH_KEY)[()]


def test_tensorflows_graph_parses_and_re_encodes_byte_for_byte(data_dir):
    for name in ("tf2_checkpoint", "tf2_manager", "tf2_sharded_policy"):
        raw = _golden_graph(data_dir, name)
        nodes = parse_object_graph(raw)
        assert encode_object_graph(nodes) == raw
        assert nodes[0].children and any(a[0] == "VARIABLE_VALUE" for n in nodes for a in n.attributes)


def test_the_golden_tf2_checkpoint_restores_as_its_object_tree(data_dir):
    from tests.helpers import golden_values as gv
    tree = fastckpt.restore(os.path.join(data_dir, "tf2_checkpoint"))
    assert sorted(tree) == ["model", "save_counter"] and tree["save_counter"] == 1
    want = gv.tf2_values()
    for k in ("kernel", "bias", "words"):
        np.testing.assert_array_equal(tree["model"][k], want[k])
    paths = object_paths(parse_object_graph(_golden_graph(data_dir)))
    assert paths["model/kernel/.ATTRIBUTES/VARIABLE_VALUE"] == "model/kernel"


names = st.text(min_size=1, max_size=8)


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 8))
    ids = st.integers(0, n - 1)
    return [TrackableObject(children=draw(st.lists(st.tuples(ids, names), max_size=3)),
                            attributes=draw(st.lists(st.tuples(names, names, names), max_size=2)),
                            slot_variables=draw(st.lists(st.tuples(ids, names, ids), max_size=2)),
                            has_checkpoint_values=draw(st.sampled_from([None, True, False])))
            for _ in range(n)]


@given(graphs())
def test_random_graphs_round_trip(nodes):
    assert parse_object_graph(encode_object_graph(nodes)) == nodes


@given(graphs(), st.data())
def test_damaged_graphs_raise_data_loss_only(nodes, data):
    raw = bytearray(encode_object_graph(nodes))
    cut = data.draw(st.integers(0, len(raw)))
    for _ in range(data.draw(st.integers(0, 4))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        parsed = parse_object_graph(bytes(raw[:cut]))
    except fastckpt.DataLossError:
        return
    for node in parsed:  # whatever parsed refers only to nodes that exist
        assert all(0 <= c < len(parsed) for c, _ in node.children)
    object_paths(parsed)


def test_hostile_shapes_cost_little(tmp_path):
    """A chain of diamonds (2**200 paths) and a 100,000-deep chain: bounded
    work, and a DataLossError rather than a crash for the deep one."""
    import time

    from fastckpt.structure.objectgraph import object_tree
    n = 200
    diamonds = [TrackableObject(children=[(i + 1, "a"), (i + 1, "b")]) for i in range(n)]
    diamonds.append(TrackableObject(attributes=[("VARIABLE_VALUE", "", "k")]))
    t = time.perf_counter()
    paths = object_paths(diamonds)
    assert len(paths["k"]) == n * 2 - 1 and time.perf_counter() - t < 10
    deep = [TrackableObject(children=[(i + 1, "x")]) for i in range(100_000)] + [
        TrackableObject(attributes=[("VARIABLE_VALUE", "", "k")])]
    import pytest
    with pytest.raises(fastckpt.DataLossError, match="too deeply"):
        object_tree(deep, {"k": np.zeros(1)})


def _named_graph(*names):
    """A root with one variable child per name (full_name = the name)."""
    root = TrackableObject(children=[(i + 1, f"v{i}") for i in range(len(names))])
    leaves = [TrackableObject(attributes=[("VARIABLE_VALUE", n, f"v{i}/.ATTRIBUTES/VARIABLE_VALUE")])
              for i, n in enumerate(names)]
    return [root] + leaves


def test_variable_names_are_left_out_where_they_stand_for_no_single_variable():
    from fastckpt.structure.objectgraph import name_tree, variable_names
    nodes = _named_graph("dense/kernel", "dense/bias", "adam/m", "adam/m", "head", "head/bias", "")
    names, bad = variable_names(nodes)
    assert names == {"v0/.ATTRIBUTES/VARIABLE_VALUE": ("dense", "kernel"),
                     "v1/.ATTRIBUTES/VARIABLE_VALUE": ("dense", "bias")}
    assert bad == ["adam/m (v2/.ATTRIBUTES/VARIABLE_VALUE, v3/.ATTRIBUTES/VARIABLE_VALUE)",
                   "head (v4/.ATTRIBUTES/VARIABLE_VALUE)", "head/bias (v5/.ATTRIBUTES/VARIABLE_VALUE)"]
    values = {f"v{i}/.ATTRIBUTES/VARIABLE_VALUE": np.full(1, i) for i in range(7)}
    try:
        name_tree(nodes, values)
    except fastckpt.InvalidArgumentError as e:
        assert "3 variable name(s)" in str(e) and "adam/m" in str(e)
    else:
        raise AssertionError("ambiguous names were accepted")
    good = _named_graph("dense/kernel", "dense/bias", "step")
    tree = name_tree(good, {f"v{i}/.ATTRIBUTES/VARIABLE_VALUE": np.full(1, i) for i in range(3)})
    assert tree["dense"]["kernel"][0] == 0 and tree["dense"]["bias"][0] == 1 and tree["step"][0] == 2
