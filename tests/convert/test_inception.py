"""FID InceptionV3 importer, checked end to end: a seeded PyTorch copy of pytorch-fid's network (same module names,
so its state dict has the keys of `pt_inception-2015-12-05-6726825d.pth`), `torch.save`d, imported with BatchNorm
folded, and compared with the torch forward.

The reference runs in float64, so the measured difference is the Flax float32 error alone. BatchNorms get random
affine params and running stats, so a folding mistake (eps, which stat goes where) shows. One comparison runs the
trunk at 75x75 (no resize), one runs pytorch-fid's whole pipeline on 64x48 images in [0, 1] (resize to 299, then
`2x - 1`) against ours on the same images in [-1, 1].
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokgen_jax.convert import inception as convert, state_dict
from tokgen_jax.convert.state_dict import load_state_dict, save_safetensors
from tokgen_jax.errors import ConfigError
from tokgen_jax.metrics.inception import FIDInceptionV3

pytestmark = pytest.mark.slow  # every test cross-checks against a torch reference

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

_TOL = 1e-4  # max |flax - torch| relative to the largest |torch| value of the output


class BasicConv2d(nn.Module):
  """torchvision's: bias-free conv, BatchNorm (eps 1e-3), ReLU."""

  def __init__(self, cin, cout, **kwargs):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):
  return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
    self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

  def forward(self, x):
    return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                      self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                      self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                      F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    double = self.branch7x7dbl_1(x)
    for k in range(2, 6):
      double = getattr(self, f"branch7x7dbl_{k}")(double)
    return torch.cat([self.branch1x1(x), seven, double, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    seven = x
    for k in range(1, 5):
      seven = getattr(self, f"branch7x7x3_{k}")(seven)
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
  """FIDInceptionE_1 (`max_pool=False`) and FIDInceptionE_2 (`max_pool=True`)."""

  def __init__(self, cin, max_pool):
    super().__init__()
    self.max_pool = max_pool
    self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
    self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
    self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    three = self.branch3x3_1(x)
    double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
    return torch.cat([self.branch1x1(x), self.branch3x3_2a(three), self.branch3x3_2b(three),
                      self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double), self.branch_pool(pooled)], 1)


class TorchFIDInception(nn.Module):
  """`pytorch_fid.inception.fid_inception_v3()` (torchvision Inception3, aux_logits=False, 1008 classes, FID
  blocks) with pytorch-fid's `InceptionV3.forward` preprocessing: `[0, 1]` NCHW → (pool3, fc logits)."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    self.Mixed_5b = FIDInceptionA(192, 32)
    self.Mixed_5c = FIDInceptionA(256, 64)
    self.Mixed_5d = FIDInceptionA(288, 64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = FIDInceptionC(768, 128)
    self.Mixed_6c = FIDInceptionC(768, 160)
    self.Mixed_6d = FIDInceptionC(768, 160)
    self.Mixed_6e = FIDInceptionC(768, 192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
    self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
    self.fc = nn.Linear(2048, 1008)

  def forward(self, x, resize=True):
    if resize:
      x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    pool = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
    return pool, self.fc(pool)


def _randomize(model):
  """He-normal convs and non-trivial BatchNorms (γ, β, running mean and variance all random), so activations keep
  their scale through 94 layers and every folded term matters; a random classifier with a random bias."""
  for module in model.modules():
    if isinstance(module, nn.Conv2d):
      nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
      nn.init.uniform_(module.weight, 0.5, 1.5)
      nn.init.normal_(module.bias, std=0.2)
      nn.init.normal_(module.running_mean, std=0.2)
      nn.init.uniform_(module.running_var, 0.5, 2.0)
      module.num_batches_tracked.fill_(1000)
  nn.init.normal_(model.fc.weight, std=0.05)
  nn.init.normal_(model.fc.bias, std=1.0)
  return model


@pytest.fixture(scope="module")
def torch_model():
  torch.manual_seed(0)
  return _randomize(TorchFIDInception()).eval()


@pytest.fixture(scope="module")
def weight_file(torch_model, tmp_path_factory):
  path = tmp_path_factory.mktemp("fid_inception") / convert.WEIGHTS_FILE
  torch.save(torch_model.state_dict(), path)
  return path


@pytest.fixture(scope="module")
def params(weight_file):
  return convert.load_inception_params(weight_file)


@pytest.fixture(scope="module")
def trunk():
  """The network at the input's own size (75x75: the smallest it takes), compiled once."""
  return jax.jit(lambda params, x: FIDInceptionV3(resize_to=None).apply({"params": params}, x))


@pytest.fixture(scope="module")
def images_75():
  return np.random.default_rng(1).uniform(-1, 1, (2, 75, 75, 3)).astype(np.float32)


def _reference(torch_model, images, resize):
  """float64 torch forward of `[-1, 1]` NHWC images, fed to it as pytorch-fid is fed: `[0, 1]` NCHW."""
  model = copy.deepcopy(torch_model).double()
  unit = torch.from_numpy(np.ascontiguousarray((images.astype(np.float64) + 1) / 2).transpose(0, 3, 1, 2))
  with torch.no_grad():
    pool, logits = model(unit, resize=resize)
  return pool.numpy(), logits.numpy()


@pytest.fixture(scope="module")
def reference_75(torch_model, images_75):
  return _reference(torch_model, images_75, resize=False)


def _assert_close(name, actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  error, scale = np.max(np.abs(actual - expected)), np.max(np.abs(expected))
  print(f"{name}: max |flax - torch| = {error:.3g} (scale {scale:.3g}, relative {error / scale:.3g})")
  assert error <= _TOL * scale, f"{name}: max |flax - torch| = {error:.3g} exceeds {_TOL} x {scale:.3g}"


def test_params_match_the_flax_module_tree(params):
  init = jax.eval_shape(FIDInceptionV3(resize_to=None).init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda a: a.shape, init["params"])
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
  assert len(jax.tree.leaves(params)) == 2 * 94 + 2


def test_trunk_at_75_matches_torch(torch_model, params, trunk, images_75, reference_75):
  out = trunk(params, images_75)
  pool, logits = reference_75
  assert np.std(pool) > 0.1, "random weights should keep the features from collapsing"
  _assert_close("pool 75x75", out["pool"], pool)
  _assert_close("logits 75x75", out["logits"], logits)
  bias = torch_model.fc.bias.detach().double().numpy()
  _assert_close("logits_unbiased 75x75", out["logits_unbiased"], logits - bias)


def test_resize_and_pipeline_match_pytorch_fid(torch_model, params):
  """64x48 images → 299x299: pytorch-fid resizes `[0, 1]` input and then maps it to `[-1, 1]`; we resize the
  `[-1, 1]` input directly. Same features, since bilinear resizing commutes with that affine map."""
  images = np.random.default_rng(2).uniform(-1, 1, (2, 64, 48, 3)).astype(np.float32)
  out = jax.jit(lambda params, x: FIDInceptionV3().apply({"params": params}, x))(params, images)
  pool, logits = _reference(torch_model, images, resize=True)
  _assert_close("pool 64x48->299", out["pool"], pool)
  _assert_close("logits 64x48->299", out["logits"], logits)


def test_cli_converts_once_to_safetensors(weight_file, params, trunk, images_75, reference_75, tmp_path):
  out = convert.main([f"--weights={weight_file}", f"--out={tmp_path / 'fid_inception.safetensors'}"])
  loaded = convert.load_inception(out)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  _assert_close("pool via safetensors", trunk(loaded, images_75)["pool"], reference_75[0])


def test_cli_rejects_other_output_suffix(weight_file, tmp_path):
  with pytest.raises(ConfigError, match="safetensors"):
    convert.main([f"--weights={weight_file}", f"--out={tmp_path / 'x.pth'}"])


def test_batch_norm_counters_are_optional(weight_file, params):
  state = {key: value for key, value in load_state_dict(weight_file).items()
           if not key.endswith("num_batches_tracked")}
  jax.tree.map(np.testing.assert_array_equal, convert.inception_params_from_torch(state), params)


def test_wrong_file_lists_every_problem(weight_file):
  state = load_state_dict(weight_file)
  del state["Mixed_6c.branch7x7dbl_3.bn.running_var"]
  state["Mixed_5b.branch5x5_2.conv.weight"] = state["Mixed_5b.branch5x5_2.conv.weight"].transpose(0, 1, 3, 2)[:32]
  state["Mixed_7d.branch1x1.conv.weight"] = np.zeros((320, 2048, 1, 1), np.float32)
  with pytest.raises(ConfigError) as error:
    convert.inception_params_from_torch(state)
  message = str(error.value)
  assert "3 problem(s)" in message
  assert "missing Mixed_6c.branch7x7dbl_3.bn.running_var (shape (160,))" in message
  assert "Mixed_5b.branch5x5_2.conv.weight has shape (32, 48, 5, 5), expected (64, 48, 5, 5)" in message
  assert "unexpected key Mixed_7d.branch1x1.conv.weight" in message
  assert convert.WEIGHTS_FILE in message


def test_torchvision_imagenet_weights_are_rejected(weight_file):
  """torchvision's ImageNet InceptionV3 shares the conv names but has a 1000-way fc and an aux head."""
  state = load_state_dict(weight_file)
  state["fc.weight"], state["fc.bias"] = np.zeros((1000, 2048), np.float32), np.zeros(1000, np.float32)
  state["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  with pytest.raises(ConfigError) as error:
    convert.inception_params_from_torch(state)
  message = str(error.value)
  assert "fc.weight has shape (1000, 2048), expected (1008, 2048)" in message
  assert "unexpected key AuxLogits.fc.weight" in message
  assert "not torchvision's ImageNet InceptionV3" in message


def test_other_network_is_named_as_such():
  with pytest.raises(ConfigError, match=r"no FID InceptionV3 key found; the file's keys begin \['features.0"):
    convert.inception_params_from_torch({"features.0.weight": np.zeros((64, 3, 3, 3), np.float32)})


def test_load_inception_rejects_an_incomplete_file(params, tmp_path):
  flat = state_dict.flatten(params)
  del flat["Mixed_7b/branch3x3_2a/bias"]
  path = save_safetensors(tmp_path / "partial.safetensors", flat)
  with pytest.raises(ConfigError, match=r"partial\.safetensors.*\n.*missing Mixed_7b/branch3x3_2a/bias"):
    convert.load_inception(path)
