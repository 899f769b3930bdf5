import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tokgen_jax import sharding
from tokgen_jax.configs import mesh as mesh_presets
from tokgen_jax.errors import ConfigError


def test_mesh_shape_fills_one_axis():
  assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
  assert sharding.mesh_shape({"data": 1, "fsdp": 8, "tensor": 1}, 8) == (1, 8, 1)


@pytest.mark.parametrize("shape,match", [
    ({"data": -1, "fsdp": -1, "tensor": 1}, "at most one axis"),
    ({"data": -1, "fsdp": 3, "tensor": 1}, "does not divide"),
    ({"data": 2, "fsdp": 2, "tensor": 1}, "needs 4 devices"),
])
def test_mesh_shape_errors_name_the_key(shape, match):
  with pytest.raises(ConfigError, match=match):
    sharding.mesh_shape(shape, 8)


class _Dense(nn.Module):
  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.ones, ("embed", "mlp")), (16, 3))
    return x @ kernel


def test_state_shardings_follow_rules_and_replicate_indivisible_dims():
  mesh = sharding.make_mesh(mesh_presets.mesh(data=1, fsdp=4, tensor=2))
  abstract = jax.eval_shape(_Dense().init, jax.random.key(0), jnp.zeros((1, 16)))
  shardings = sharding.state_shardings(abstract, mesh, mesh_presets.LOGICAL_AXIS_RULES)
  # embed→fsdp (16 % 4 == 0) is kept; mlp→tensor (3 % 2 != 0) falls back to replication.
  assert shardings["params"]["kernel"].spec == P("fsdp", None)


def test_global_batch_is_sharded_over_data_and_fsdp():
  mesh = sharding.make_mesh(mesh_presets.mesh(data=2, fsdp=4))
  local = {"image": np.arange(8 * 3, dtype=np.float32).reshape(8, 3)}
  batch = sharding.global_batch(local, mesh)
  assert batch["image"].sharding.spec == P(("data", "fsdp"))
  assert len(batch["image"].addressable_shards) == 8
  chex.assert_trees_all_equal(np.asarray(batch["image"]), local["image"])


def test_check_batch_size_error_names_key_and_fix():
  mesh = sharding.make_mesh(mesh_presets.mesh(data=8))
  sharding.check_batch_size(16, mesh)
  with pytest.raises(ConfigError, match=r"config.batch_size=12 .* multiple of 8"):
    sharding.check_batch_size(12, mesh)
