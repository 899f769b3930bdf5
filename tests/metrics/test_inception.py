"""FIDInceptionV3 shapes and input checks, its resize against torch's `F.interpolate`, and Inception Score against
the original formula in numpy. Equality of the network with PyTorch lives in tests/convert/test_inception.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.errors import ConfigError
from tokgen_jax.metrics.inception import FIDInceptionV3, inception_score, resize_to_input


@pytest.fixture(scope="module")
def abstract_params():
  return jax.eval_shape(FIDInceptionV3(resize_to=None).init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))


@pytest.mark.parametrize("resize_to, shape", [(299, (2, 32, 40, 3)), (None, (2, 75, 75, 3)), (None, (1, 120, 90, 3))])
def test_outputs_have_fid_shapes(abstract_params, resize_to, shape):
  out = jax.eval_shape(FIDInceptionV3(resize_to=resize_to).apply, abstract_params, jnp.zeros(shape, jnp.bfloat16))
  batch = shape[0]
  assert {name: (value.shape, value.dtype) for name, value in out.items()} == {
      "pool": ((batch, 2048), jnp.float32), "logits": ((batch, 1008), jnp.float32),
      "logits_unbiased": ((batch, 1008), jnp.float32)}


@pytest.mark.parametrize("module, shape, match", [
    (FIDInceptionV3(), (2, 64, 64, 1), r"RGB images \[B, H, W, 3\]"),
    (FIDInceptionV3(), (2, 4, 64, 64, 3), r"fold video frames into the batch"),
    (FIDInceptionV3(resize_to=None), (2, 74, 80, 3), r"input 74x80 is too small.*75x75"),
    (FIDInceptionV3(resize_to=64), (2, 299, 299, 3), r"resize_to=64 is too small"),
])
def test_bad_inputs_are_named(abstract_params, module, shape, match):
  with pytest.raises(ConfigError, match=match):
    jax.eval_shape(module.apply, abstract_params, jnp.zeros(shape))


@pytest.mark.slow
@pytest.mark.parametrize("height, width", [(32, 32), (64, 48), (512, 512), (400, 350), (300, 298)])
def test_resize_matches_torch_bilinear(height, width):
  """pytorch-fid's `F.interpolate(mode="bilinear", align_corners=False)`, up and down (neither antialiases)."""
  torch = pytest.importorskip("torch")
  images = np.random.default_rng(height).uniform(-1, 1, (2, height, width, 3)).astype(np.float32)
  expected = torch.nn.functional.interpolate(
      torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float64)), size=(299, 299), mode="bilinear",
      align_corners=False).numpy().transpose(0, 2, 3, 1)
  resized = resize_to_input(jnp.asarray(images))
  assert resized.shape == (2, 299, 299, 3)
  np.testing.assert_allclose(resized, expected, rtol=0, atol=1e-6)


def test_resize_keeps_299_inputs_unchanged():
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 299, 299, 3)), jnp.float32)
  assert resize_to_input(images) is images


def numpy_inception_score(logits: np.ndarray, splits: int) -> tuple[float, float]:
  """openai/improved-gan `inception_score.py`, on softmax predictions computed here."""
  preds = np.exp(logits - logits.max(axis=1, keepdims=True))
  preds /= preds.sum(axis=1, keepdims=True)
  scores = []
  for i in range(splits):
    part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return np.mean(scores), np.std(scores)


@pytest.mark.parametrize("n, splits", [(50, 10), (37, 4), (20, 1)])
def test_inception_score_matches_the_original_formula(n, splits):
  rng = np.random.default_rng(n)
  logits = rng.normal(0, 3, (n, 1008)) + 6 * np.eye(1008)[rng.integers(0, 20, n)]  # confident-ish, 20 classes
  mean, std = inception_score(logits.astype(np.float32), splits)
  expected = numpy_inception_score(logits.astype(np.float32).astype(np.float64), splits)
  np.testing.assert_allclose((mean, std), expected, rtol=1e-10, atol=1e-12)
  assert 1 < mean < 1008


def test_uniform_predictions_score_one():
  for logits in (np.zeros((40, 1008)), np.full((40, 1008), 7.5, np.float32)):
    mean, std = inception_score(logits, splits=4)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_one_confident_class_per_sample_scores_the_number_of_classes():
  """Certain predictions spread evenly over k classes give exp(log k) = k; 1000-logit gaps underflow the softmax
  to exact zeros, where `0 log 0` must count as 0 (the plain formula gives NaN)."""
  logits = 1000.0 * np.eye(1008)[np.tile(np.arange(8), 5)]
  mean, std = inception_score(jnp.asarray(logits, jnp.float32), splits=5)
  assert mean == pytest.approx(8.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("logits, splits, match", [
    (np.zeros((10, 2, 1008)), 1, r"shape \(10, 2, 1008\).*\[N, classes\]"),
    (np.zeros((5, 1008)), 10, r"splits=10 must be an integer in \[1, N=5\]"),
    (np.zeros((5, 1008)), 0, r"splits=0"),
    (np.full((5, 1008), np.nan), 1, r"NaN or inf"),
])
def test_inception_score_rejects_bad_input(logits, splits, match):
  with pytest.raises(ConfigError, match=match):
    inception_score(logits, splits)
