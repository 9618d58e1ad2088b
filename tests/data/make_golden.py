"""Writes the golden checkpoints in this directory with TensorFlow.

Run from the repository root:  python -m tests.data.make_golden
(written with tensorflow-cpu 2.21.0). The values come from
tests/helpers/golden_values.py; tests/format/test_golden_tf.py reads them without TF.
"""

import os
import shutil

import tensorflow as tf

import tests.helpers.golden_values as gv

HERE = os.path.dirname(os.path.abspath(__file__))

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 3)


def fresh(name):
    d = os.path.join(HERE, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def tf1_saver():
    """TF1 Saver, relative save path, max_to_keep=2, three saves."""
    d = fresh("tf1_saver")
    with tf.Graph().as_default():
        vs = [tf.compat.v1.Variable(v, name=n) for n, v in gv.tf1_values().items()]
        saver = tf.compat.v1.train.Saver(vs, max_to_keep=2)
        with tf.compat.v1.Session() as s:
            s.run(tf.compat.v1.global_variables_initializer())
            cwd = os.getcwd()
            os.chdir(d)
            try:
                for step in (1000, 2000, 3000):
                    saver.save(s, "my-model", global_step=step, write_meta_graph=False)
            finally:
                os.chdir(cwd)


def tf1_sharded():
    """TF1 Saver(sharded=True) with one variable per CPU device: 3 data files."""
    d = fresh("tf1_sharded")
    with tf.Graph().as_default():
        vs = []
        for i, (n, v) in enumerate(gv.sharded_values().items()):
            with tf.device(f"/device:CPU:{i}"):
                vs.append(tf.compat.v1.Variable(v, name=n))
        saver = tf.compat.v1.train.Saver(vs, sharded=True)
        with tf.compat.v1.Session() as s:
            s.run(tf.compat.v1.global_variables_initializer())
            saver.save(s, os.path.join(d, "model"), global_step=7, write_meta_graph=False)


def tf1_partitioned():
    """A TF1 partitioned variable: slice entries in one bundle."""
    d = fresh("tf1_partitioned")
    with tf.Graph().as_default():
        v = tf.compat.v1.get_variable(
            "part", initializer=tf.constant(gv.partitioned_value()),
            partitioner=tf.compat.v1.fixed_size_partitioner(3))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as s:
            s.run(tf.compat.v1.global_variables_initializer())
            assert len(list(v)) == 3
            saver.save(s, os.path.join(d, "model"), write_meta_graph=False)


class Model(tf.Module):
    def __init__(self):
        super().__init__()
        vals = gv.tf2_values()
        self.kernel = tf.Variable(vals["kernel"])
        self.bias = tf.Variable(vals["bias"])
        self.words = tf.Variable(vals["words"])


def tf2_checkpoint():
    """tf.train.Checkpoint.save: object-graph keys, state file with one path."""
    d = fresh("tf2_checkpoint")
    ckpt = tf.train.Checkpoint(model=Model())
    ckpt.save(os.path.join(d, "ckpt"))


def tf2_manager():
    """CheckpointManager(max_to_keep=2) after 3 saves: timestamps in the state."""
    d = fresh("tf2_manager")
    ckpt = tf.train.Checkpoint(model=Model())
    mgr = tf.train.CheckpointManager(ckpt, d, max_to_keep=2)
    for _ in range(3):
        mgr.save()


def tf2_sharded_policy():
    """Checkpoint with MaxShardSizePolicy: several shards, variables sliced."""
    d = fresh("tf2_sharded_policy")
    ckpt = tf.train.Checkpoint(model=Model())
    opts = tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=24))
    ckpt.write(os.path.join(d, "ckpt"), options=opts)


if __name__ == "__main__":
    for fn in (tf1_saver, tf1_sharded, tf1_partitioned, tf2_checkpoint, tf2_manager, tf2_sharded_policy):
        fn()
        print("wrote", fn.__name__)
