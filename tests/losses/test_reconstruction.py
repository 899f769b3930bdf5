import jax.numpy as jnp
import numpy as np

from tokgen_jax.losses import reconstruction_loss


def test_weighted_l1_plus_l2_closed_form():
  x = jnp.array([[0.0, 1.0], [2.0, -1.0]])
  y = jnp.zeros_like(x)
  np.testing.assert_allclose(reconstruction_loss(x, y, l1_weight=2.0, l2_weight=0.5),
                             2.0 * (4.0 / 4) + 0.5 * (6.0 / 4), rtol=1e-6)
  assert float(reconstruction_loss(y, y, 1.0, 1.0)) == 0.0
