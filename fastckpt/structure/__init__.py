"""Nesting: a state's tree of dicts, lists and tuples flattened to named
tensors and its structure record (:mod:`fastckpt.structure.tree`), and
TensorFlow 2's object graphs (:mod:`fastckpt.structure.objectgraph`). Above
one bundle, beside the directory layer, below saving and restoring."""

from fastckpt.bundle.frameworks import to_numpy
from fastckpt.structure.tree import flatten, unflatten
from fastckpt.structure.record import STRUCTURE_KEY, parse_structure_record, read_record, with_structure_record

__all__ = ["flatten", "unflatten", "to_numpy", "with_structure_record", "parse_structure_record", "read_record",
           "STRUCTURE_KEY"]
