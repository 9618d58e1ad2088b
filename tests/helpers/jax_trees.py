"""JAX trees for the target= tests, imported only by their child processes
(JAX's threads would make later fork() calls in the pytest process unsafe)."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class AdamLike(NamedTuple):
    count: object
    mu: object
    nu: object


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainLike:
    step: object
    params: object
    opt_state: object


def params(seed):
    k = jax.random.PRNGKey(seed)
    return {"dense": {"kernel": jax.random.normal(k, (4, 3)), "bias": jnp.zeros(3)},
            "embed": jnp.arange(10, dtype=jnp.bfloat16)}


def state(seed):
    p = params(seed)
    return TrainLike(step=jnp.array(seed, jnp.int32), params=p,
                     opt_state=(AdamLike(jnp.array(seed, jnp.int32), jax.tree_util.tree_map(lambda x: x * 0 + 1, p),
                                         jax.tree_util.tree_map(lambda x: x * 0 + 2, p)), None))


def same(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb, (ta, tb)
    for x, y in zip(la, lb):
        assert isinstance(y, jax.Array) and x.dtype == y.dtype and x.shape == y.shape
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
