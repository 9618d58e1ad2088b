"""The values the golden checkpoints in tests/data hold. Shared by
tests/data/make_golden.py (which wrote them with TensorFlow) and the tests
(which read them without TensorFlow), so both agree bit for bit."""

import ml_dtypes
import numpy as np


def tf1_values():
    """Variables of the TF1 Saver checkpoints (graph names -> arrays)."""
    rng = np.random.default_rng(1234)
    return {
        "dense/kernel": rng.standard_normal((3, 4)).astype(np.float32),
        "dense/bias": rng.standard_normal(4).astype(np.float64),
        "global_step": np.int64(1000),
        "vocab": np.array([b"alpha", b"", b"\xff\x00binary", "é".encode()], dtype=object),
        "half": rng.standard_normal(5).astype(np.float16),
        "bf": rng.standard_normal(6).astype(ml_dtypes.bfloat16),
        "flags": np.array([True, False, True]),
        "counts": np.arange(7, dtype=np.uint8),
        "c": (rng.standard_normal(2) + 1j * rng.standard_normal(2)).astype(np.complex128),
        "empty": np.zeros((0, 3), np.float32),
    }


def sharded_values():
    """Three variables, one per device, for Saver(sharded=True)."""
    return {
        "shard_a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "shard_b": np.arange(5, dtype=np.int32) * 7,
        "shard_c": np.linspace(0, 1, 9).astype(np.float64),
    }


def partitioned_value():
    """A [10, 4] float32 variable saved as 3 row partitions."""
    return np.arange(40, dtype=np.float32).reshape(10, 4) / 8


def tf2_values():
    """Variables of the tf.train.Checkpoint checkpoints."""
    rng = np.random.default_rng(99)
    return {
        "kernel": rng.standard_normal((4, 2)).astype(np.float32),
        "bias": np.array([0.5, -0.25], np.float32),
        "words": np.array([b"tf2", b"checkpoint"], dtype=object),
    }
