"""TensorFlow 2 object graphs against live TensorFlow: fastckpt.restore of a
tf.train.Checkpoint gives its object tree (slots where they belong);
save(object_graph=True) restores into tf.Modules with assert_consumed();
save(template=) puts weights trained elsewhere into a Keras model."""

import numpy as np
import pytest

import fastckpt

tf = pytest.importorskip("tensorflow")


class Dense(tf.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.kernel = tf.Variable(tf.zeros((n_in, n_out)))
        self.bias = tf.Variable(tf.zeros(n_out))


class Net(tf.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Dense(3, 4)
        self.blocks = [Dense(4, 4), Dense(4, 2)]
        self.scale = tf.Variable(tf.constant(1.0, tf.float64))


def _state(seed=0):
    rng = np.random.default_rng(seed)

    def dense(i, o):
        return {"kernel": rng.standard_normal((i, o)).astype(np.float32), "bias": rng.standard_normal(o).astype(np.float32)}
    return {"net": {"encoder": dense(3, 4), "blocks": [dense(4, 4), dense(4, 2)], "scale": np.array(2.5)},
            "step": np.array(11, np.int64)}


def test_save_with_an_object_graph_restores_into_tf_modules_with_assert_consumed(tmp_path):
    state = _state()
    fastckpt.save(state, str(tmp_path / "ck"), object_graph=True)
    net, step = Net(), tf.Variable(tf.constant(0, tf.int64))
    ckpt = tf.train.Checkpoint(net=net, step=step)
    ckpt.restore(str(tmp_path / "ck")).assert_consumed()
    np.testing.assert_array_equal(net.encoder.kernel.numpy(), state["net"]["encoder"]["kernel"])
    np.testing.assert_array_equal(net.blocks[1].bias.numpy(), state["net"]["blocks"][1]["bias"])
    assert net.scale.numpy() == 2.5 and step.numpy() == 11 and ckpt.save_counter.numpy() == 1
    # fastckpt reads its own state back exactly (the structure record), TensorFlow by the graph
    back = fastckpt.restore(str(tmp_path / "ck"))
    assert type(back["net"]["blocks"]) is list
    np.testing.assert_array_equal(back["net"]["blocks"][0]["kernel"], state["net"]["blocks"][0]["kernel"])
    # and the TF1 way still works on the same file
    r = tf.train.load_checkpoint(str(tmp_path / "ck"))
    assert r.get_tensor("net/encoder/kernel/.ATTRIBUTES/VARIABLE_VALUE").shape == (3, 4)


def test_object_graph_names_are_escaped_as_tensorflow_escapes_them(tmp_path):
    state = {"a.b": {"c/d": np.ones(2, np.float32)}}
    fastckpt.save(state, str(tmp_path / "ck"), object_graph=True)
    assert "a..b/c.Sd/.ATTRIBUTES/VARIABLE_VALUE" in fastckpt.load_checkpoint(str(tmp_path / "ck"))
    inner = tf.Module()
    setattr(inner, "c/d", tf.Variable(tf.zeros(2)))
    root = tf.train.Checkpoint(**{"a.b": inner})
    theirs = root.save(str(tmp_path / "tf"))
    assert "a..b/c.Sd/.ATTRIBUTES/VARIABLE_VALUE" in fastckpt.load_checkpoint(theirs)  # TensorFlow's own naming
    root.restore(str(tmp_path / "ck")).assert_consumed()
    assert getattr(inner, "c/d").numpy().tolist() == [1.0, 1.0]


def test_object_graph_refusals(tmp_path):
    with pytest.raises(fastckpt.InvalidArgumentError, match="epoch holds a Python value, not a tensor"):
        fastckpt.save({"model": {"w": np.ones(2)}, "epoch": 3}, str(tmp_path / "a"), object_graph=True)
    with pytest.raises(fastckpt.InvalidArgumentError, match="is not a str"):
        fastckpt.save({"model": {1: np.ones(2)}}, str(tmp_path / "b"), object_graph=True)
    assert not list(tmp_path.iterdir())


def test_restore_returns_the_object_tree_of_a_tensorflow_checkpoint(tmp_path):
    net = Net()
    for v, x in zip(net.variables, range(100)):
        v.assign(tf.fill(v.shape, tf.cast(x, v.dtype)))
    path = tf.train.Checkpoint(model=net).save(str(tmp_path / "tf"))
    tree = fastckpt.restore(path)
    assert sorted(tree) == ["model", "save_counter"]
    assert sorted(tree["model"]) == ["blocks", "encoder", "scale"]
    assert sorted(tree["model"]["blocks"]) == ["0", "1"]
    np.testing.assert_array_equal(tree["model"]["blocks"]["1"]["kernel"], net.blocks[1].kernel.numpy())
    flat = fastckpt.load_checkpoint(path)  # load_checkpoint stays flat
    assert "model/blocks/1/kernel/.ATTRIBUTES/VARIABLE_VALUE" in flat
    into = {"model": {"encoder": {"kernel": np.zeros((3, 4), np.float32)}}}
    out = fastckpt.restore(path, into=into)
    assert out["model"]["encoder"]["kernel"] is into["model"]["encoder"]["kernel"]
    np.testing.assert_array_equal(into["model"]["encoder"]["kernel"], net.encoder.kernel.numpy())
    with pytest.raises(fastckpt.InvalidArgumentError, match="does not have: model/decoder/kernel"):
        fastckpt.restore(path, into={"model": {"decoder": {"kernel": np.zeros(1)}}})


def test_optimizer_slots_sit_in_their_optimizer(tmp_path):
    v = tf.Variable([1.0, 2.0])
    opt = tf.compat.v1.train.AdamOptimizer(0.1)
    opt.minimize(lambda: tf.reduce_sum(v * v), var_list=[v])
    path = tf.train.Checkpoint(model=tf.Module(), v=v, optimizer=opt).save(str(tmp_path / "slots"))
    tree = fastckpt.restore(path)
    slots = tree["optimizer"][".OPTIMIZER_SLOT"]["v"]
    np.testing.assert_array_equal(slots["m"], opt.get_slot(v, "m").numpy())
    np.testing.assert_array_equal(slots["v"], opt.get_slot(v, "v").numpy())
    np.testing.assert_array_equal(tree["v"], v.numpy())
    # and the same tree is a template's layout: the slots go back under their keys
    tree["optimizer"][".OPTIMIZER_SLOT"]["v"]["m"] = np.full(2, 9.0, np.float32)
    fastckpt.save(tree, str(tmp_path / "again"), template=path)
    v2 = tf.Variable([0.0, 0.0])
    opt2 = tf.compat.v1.train.AdamOptimizer(0.1)
    opt2.minimize(lambda: tf.reduce_sum(v2 * v2), var_list=[v2])
    tf.train.Checkpoint(model=tf.Module(), v=v2, optimizer=opt2).restore(str(tmp_path / "again")).assert_consumed()
    assert opt2.get_slot(v2, "m").numpy().tolist() == [9.0, 9.0]


def _keras_model():
    return tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(4, activation="relu"),
                                tf.keras.layers.Dense(2)])


def test_template_puts_weights_trained_elsewhere_into_a_keras_model(tmp_path):
    template = tf.train.Checkpoint(model=_keras_model()).save(str(tmp_path / "keras"))
    layout = fastckpt.restore(template)
    ops = layout["model"]["_functional"]["_operations"]
    rng = np.random.default_rng(3)
    trained = {k: {"_kernel": rng.standard_normal(v["_kernel"].shape).astype(np.float32),
                   "bias": rng.standard_normal(v["bias"].shape).astype(np.float32)} for k, v in ops.items()}
    state = {"model": {"_functional": {"_operations": trained}}}
    fastckpt.save(state, str(tmp_path / "trained"), template=template)
    served = _keras_model()
    tf.train.Checkpoint(model=served).restore(str(tmp_path / "trained")).assert_consumed()
    x = rng.standard_normal((5, 3)).astype(np.float32)
    h = np.maximum(x @ trained["1"]["_kernel"] + trained["1"]["bias"], 0)
    np.testing.assert_allclose(served(x).numpy(), h @ trained["2"]["_kernel"] + trained["2"]["bias"], rtol=1e-5)


def test_template_mismatches_are_listed_all_at_once(tmp_path):
    template = tf.train.Checkpoint(model=_keras_model()).save(str(tmp_path / "keras"))
    ops = fastckpt.restore(template)["model"]["_functional"]["_operations"]
    bad = {"model": {"_functional": {"_operations": {
        "1": {"_kernel": np.zeros((3, 5), np.float32), "bias": ops["1"]["bias"].astype(np.float64)},
        "9": {"extra": np.zeros(1, np.float32)}}}}}
    with pytest.raises(fastckpt.InvalidArgumentError) as e:
        fastckpt.save(bad, str(tmp_path / "bad"), template=template)
    text = str(e.value)
    for part in ("shape: model/_functional/_operations/1/_kernel is [3, 5]",
                 "dtype: model/_functional/_operations/1/bias is float64",
                 "missing: model/_functional/_operations/2/_kernel",
                 "not in the template: model/_functional/_operations/9/extra"):
        assert part in text, text
    assert not (tmp_path / "bad.index").exists()
    with pytest.raises(fastckpt.InvalidArgumentError, match="no TensorFlow 2 object graph"):
        fastckpt.write_bundle(str(tmp_path / "plain"), {"w": np.ones(1)})
        fastckpt.save({"w": np.ones(1)}, str(tmp_path / "x"), template=str(tmp_path / "plain"))


def test_a_flat_into_of_the_checkpoints_own_keys_fills_by_key(tmp_path):
    """Resuming a Keras/TF2 run directory with a flat dict of the
    checkpoint's keys (as load_checkpoint lists them, the object graph
    included): filled by key, as in 0.2, and TensorFlow restores the
    result object-based."""
    net = Net()
    net.encoder.kernel.assign(np.full((3, 4), 3.0, np.float32))
    ckpt = tf.train.Checkpoint(net=net)
    mgr = tf.train.CheckpointManager(ckpt, str(tmp_path / "run"), max_to_keep=2)
    mgr.save()
    reader = fastckpt.load_checkpoint(str(tmp_path / "run"))
    state = {k: np.zeros_like(reader.get_tensor(k)) for k in reader}
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in state
    restored = fastckpt.CheckpointManager(str(tmp_path / "run")).restore_or_initialize(state)
    key = "net/encoder/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    assert (state[key] == 3.0).all()  # filled in place; the object tree holds the same arrays
    assert restored["net"]["encoder"]["kernel"] is state[key]
    assert state["_CHECKPOINTABLE_OBJECT_GRAPH"][()] == reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")[()]
    state[key] += 1  # continue the run with fastckpt; TensorFlow resumes from it object-based
    fastckpt.CheckpointManager(str(tmp_path / "run"), checkpoint_name="ckpt").save(state, 2)
    other = Net()
    tf.train.Checkpoint(net=other).restore(tf.train.latest_checkpoint(str(tmp_path / "run"))).assert_existing_objects_matched()
    assert (other.encoder.kernel.numpy() == 4.0).all()


def test_a_local_name_with_a_slash_is_not_the_path_through_it(tmp_path):
    """A local name "a/b" beside the path a -> b: two variables; into
    fills the one its own keys lead to."""
    root = tf.Module()
    root.a = tf.Module()
    root.a.b = tf.Variable(np.full(3, 1.0, np.float32))
    setattr(root, "a/b", tf.Variable(np.full(3, 2.0, np.float32)))
    tf.train.Checkpoint(model=root).write(str(tmp_path / "ck"))
    flat_name, nested = np.zeros(3, np.float32), np.zeros(3, np.float32)
    got = fastckpt.restore(str(tmp_path / "ck"), into={"model": {"a/b": flat_name, "a": {"b": nested}}})
    assert (flat_name == 2.0).all() and (nested == 1.0).all()
    assert got["model"]["a/b"] is flat_name and got["model"]["a"]["b"] is nested


def _keras_trained(seed=0):
    """A Keras 3 functional model with named layers and an Adam that has
    taken a step (so its slots exist): Keras tracks each kernel under the
    model and again under the optimizer's _trainable_variables."""
    tf.keras.utils.set_random_seed(seed)
    inp = tf.keras.Input((3,), name="x")
    hidden = tf.keras.layers.Dense(4, activation="relu", name="hidden")(inp)
    model = tf.keras.Model(inp, tf.keras.layers.Dense(2, name="head")(hidden))
    opt = tf.keras.optimizers.Adam(0.01)
    model.compile(opt, "mse")
    model.fit(np.ones((8, 3), np.float32), np.ones((8, 2), np.float32), verbose=0, epochs=1)
    return model, opt


def test_keras_layers_by_name_round_trip_through_a_template(tmp_path):
    """restore(by_name=True) lays a Keras model and its optimizer out by the
    names Keras gave the variables (layer/variable, optimizer/slot), each
    variable once; changed there and saved with template=, TensorFlow
    restores every one of them (assert_consumed) with the new values."""
    model, opt = _keras_trained()
    template = tf.train.Checkpoint(model=model, optimizer=opt).save(str(tmp_path / "keras"))
    named = fastckpt.restore(template, by_name=True)
    assert set(named) == {"hidden", "head", "adam", "save_counter"}
    assert set(named["hidden"]) == {"kernel", "bias"}
    np.testing.assert_array_equal(named["hidden"]["kernel"], model.get_layer("hidden").kernel.numpy())
    assert "hidden_kernel_momentum" in named["adam"] and "iteration" in named["adam"]
    rng = np.random.default_rng(5)
    named["hidden"]["kernel"] = rng.standard_normal((3, 4)).astype(np.float32)
    named["head"]["bias"] = rng.standard_normal(2).astype(np.float32)
    named["adam"]["hidden_kernel_momentum"] = np.full((3, 4), 0.25, np.float32)
    fastckpt.save(named, str(tmp_path / "renamed"), template=template)
    model2, opt2 = _keras_trained(seed=1)
    tf.train.Checkpoint(model=model2, optimizer=opt2).restore(str(tmp_path / "renamed")).assert_consumed()
    np.testing.assert_array_equal(model2.get_layer("hidden").kernel.numpy(), named["hidden"]["kernel"])
    np.testing.assert_array_equal(model2.get_layer("head").bias.numpy(), named["head"]["bias"])
    momentum, = [v for v in opt2.variables if v.path.endswith("/hidden_kernel_momentum")]  # adam_1/ here
    assert (momentum.numpy() == 0.25).all()
    # and into= is laid out by name too, filled in place
    into = {"hidden": {"kernel": np.zeros((3, 4), np.float32)}}
    back = fastckpt.restore(str(tmp_path / "renamed"), into=into, by_name=True)
    np.testing.assert_array_equal(into["hidden"]["kernel"], named["hidden"]["kernel"])
    assert back["hidden"]["kernel"] is into["hidden"]["kernel"]


def test_a_tied_keras_variable_replaced_at_one_path_is_saved(tmp_path):
    """The object tree shows a Keras kernel under the model and under the
    optimizer's _trainable_variables; replacing it at one path is enough
    (the other still holds the template's value). Two different new values
    for one variable are refused, naming both paths."""
    model, opt = _keras_trained()
    template = tf.train.Checkpoint(model=model, optimizer=opt).save(str(tmp_path / "keras"))
    tree = fastckpt.restore(template)
    tree["model"]["_operations"]["1"]["_kernel"] = np.full((3, 4), 0.75, np.float32)
    fastckpt.save(tree, str(tmp_path / "one"), template=template)
    model2, opt2 = _keras_trained(seed=1)
    tf.train.Checkpoint(model=model2, optimizer=opt2).restore(str(tmp_path / "one")).assert_consumed()
    assert (model2.get_layer("hidden").kernel.numpy() == 0.75).all()
    tree["optimizer"]["_trainable_variables"]["0"] = np.full((3, 4), 0.5, np.float32)
    with pytest.raises(fastckpt.InvalidArgumentError, match="given two different new values") as e:
        fastckpt.save(tree, str(tmp_path / "two"), template=template)
    assert "model/_operations/1/_kernel" in str(e.value) and "optimizer/_trainable_variables/0" in str(e.value)
    assert not (tmp_path / "two.index").exists()


def test_by_name_needs_an_object_graph(tmp_path):
    fastckpt.write_bundle(str(tmp_path / "plain"), {"w": np.ones(1)})
    with pytest.raises(fastckpt.InvalidArgumentError, match="no TensorFlow 2 object graph"):
        fastckpt.restore(str(tmp_path / "plain"), by_name=True)
