"""LPIPS importers, checked end to end: a seeded PyTorch VGG16 + heads, `torch.save`d, imported, and compared with
the lpips v0.1 algorithm written in torch (always) and with the real `lpips.LPIPS` class (when installed).

The reference runs in float64, so the measured difference is the Flax float32 error alone. Images are 64x48, not
square, so a swapped H/W anywhere (layouts, kernel transposes) shows.
"""

import copy
import importlib.util
import sys
import types

import jax
import numpy as np
import pytest

from tokgen_jax.convert import lpips as convert, state_dict
from tokgen_jax.convert.state_dict import load_state_dict, save_safetensors
from tokgen_jax.errors import ConfigError
from tokgen_jax.losses.perceptual import LPIPS, LPIPS_SCALE, LPIPS_SHIFT, VGG16Features

pytestmark = pytest.mark.slow  # every test cross-checks against a torch reference

torch = pytest.importorskip("torch")
nn = torch.nn

_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_TAP_ENDS = (4, 9, 16, 23, 30)  # lpips' slices of features: [0:4], [4:9], [9:16], [16:23], [23:30]
_CHANNELS = (64, 128, 256, 512, 512)
_RTOL = 1e-4


def torch_vgg16_features() -> "nn.Sequential":
  """torchvision's `vgg16().features`, module for module (so its state dict has the same keys), torchvision init
  plus small random biases so the bias import is exercised."""
  layers, channels = [], 3
  for value in _VGG16_CFG:
    if value == "M":
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      conv = nn.Conv2d(channels, value, kernel_size=3, padding=1)
      nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
      nn.init.normal_(conv.bias, std=0.05)
      layers += [conv, nn.ReLU(inplace=True)]
      channels = value
  return nn.Sequential(*layers)


class NetLinLayer(nn.Module):
  """The lpips package's head: dropout, then a bias-free 1x1 conv to one channel, in `.model`."""

  def __init__(self, channels):
    super().__init__()
    self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, stride=1, padding=0, bias=False))
    nn.init.uniform_(self.model[1].weight, 0.0, 1.0)  # non-negative, like the released heads

  def forward(self, x):
    return self.model(x)


class TorchHeads(nn.Module):
  """`lin0`..`lin4` as in `lpips.LPIPS`, so the state dict has the released file's keys (`lin0.model.1.weight`)."""

  def __init__(self):
    super().__init__()
    for k, channels in enumerate(_CHANNELS):
      setattr(self, f"lin{k}", NetLinLayer(channels))


def torch_taps(features, image):
  h, taps, start = image, [], 0
  for end in _TAP_ENDS:
    h = features[start:end](h)
    taps.append(h)
    start = end
  return taps


def reference_lpips(features, heads, x, y):
  """lpips v0.1 `LPIPS.forward` (lpips=True, spatial=False) with torch ops: NCHW in [-1, 1] → `[B]`."""
  shift = torch.tensor(LPIPS_SHIFT, dtype=x.dtype)[None, :, None, None]
  scale = torch.tensor(LPIPS_SCALE, dtype=x.dtype)[None, :, None, None]

  def normalize_tensor(feature, eps=1e-10):
    return feature / (torch.sqrt(torch.sum(feature ** 2, dim=1, keepdim=True)) + eps)

  taps_x, taps_y = torch_taps(features, (x - shift) / scale), torch_taps(features, (y - shift) / scale)
  value = 0
  for k, (tap_x, tap_y) in enumerate(zip(taps_x, taps_y)):
    diff = (normalize_tensor(tap_x) - normalize_tensor(tap_y)) ** 2
    value = value + getattr(heads, f"lin{k}")(diff).mean([2, 3], keepdim=True)
  return value.reshape(-1)


def _nchw(image: np.ndarray, dtype) -> "torch.Tensor":
  return torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2))).to(dtype)


@pytest.fixture(scope="module")
def torch_model():
  torch.manual_seed(0)
  return torch_vgg16_features().eval(), TorchHeads().eval()


@pytest.fixture(scope="module")
def weight_files(torch_model, tmp_path_factory):
  """The two files in their released layouts: `features.*` plus classifier keys (ignored), and the heads."""
  features, heads = torch_model
  folder = tmp_path_factory.mktemp("lpips_weights")
  vgg = {f"features.{key}": value for key, value in features.state_dict().items()}
  vgg["classifier.0.weight"] = torch.zeros(8, 4)
  torch.save(vgg, folder / "vgg16-397923af.pth")
  torch.save(heads.state_dict(), folder / "vgg.pth")
  return folder / "vgg16-397923af.pth", folder / "vgg.pth"


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 64, 48, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
  y[1] = rng.uniform(-1, 1, y[1].shape)  # one near pair, one unrelated pair
  return x, y


@pytest.fixture(scope="module")
def flax_lpips():
  return jax.jit(lambda params, x, y: LPIPS().apply({"params": params}, x, y))


@pytest.fixture(scope="module")
def reference(torch_model, images):
  features, heads = (copy.deepcopy(module).double() for module in torch_model)
  with torch.no_grad():
    return reference_lpips(features, heads, *(_nchw(image, torch.float64) for image in images)).numpy()


def _assert_close(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  print(f"max |flax - reference| = {np.max(np.abs(actual - expected)):.3g} "
        f"(relative {np.max(np.abs(actual - expected) / np.abs(expected)):.3g}) at values {expected}")
  np.testing.assert_allclose(actual, expected, rtol=_RTOL, atol=1e-7)


def test_params_match_the_flax_module_tree(weight_files):
  params = convert.load_lpips_params(*weight_files)
  init = jax.eval_shape(LPIPS().init, jax.random.key(0), np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 16, 3)))
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda a: a.shape, init["params"])
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))


def test_vgg16_taps_match_torch(torch_model, weight_files, images):
  features = copy.deepcopy(torch_model[0]).double()
  params = convert.vgg16_params_from_torch(load_state_dict(weight_files[0]))
  taps = VGG16Features().apply({"params": params}, images[0][:1])
  with torch.no_grad():
    expected = torch_taps(features, _nchw(images[0][:1], torch.float64))
  for tap, want in zip(taps, expected):
    want = want.numpy().transpose(0, 2, 3, 1)
    assert tap.shape == want.shape
    np.testing.assert_allclose(tap, want, rtol=_RTOL, atol=_RTOL * np.abs(want).max())


def test_lpips_from_pth_matches_torch_reference(weight_files, images, flax_lpips, reference):
  params = convert.load_lpips_params(*weight_files)
  _assert_close(flax_lpips(params, *images), reference)


def test_cli_converts_once_to_safetensors(weight_files, images, flax_lpips, reference, tmp_path):
  vgg, heads = weight_files
  out = convert.main([f"--vgg={vgg}", f"--heads={heads}", f"--out={tmp_path / 'lpips_vgg.safetensors'}"])
  params = convert.load_lpips(out)
  jax.tree.map(np.testing.assert_array_equal, params, convert.load_lpips_params(vgg, heads))
  _assert_close(flax_lpips(params, *images), reference)


def test_cli_rejects_other_output_suffix(weight_files, tmp_path):
  with pytest.raises(ConfigError, match="safetensors"):
    convert.main([f"--vgg={weight_files[0]}", f"--heads={weight_files[1]}", f"--out={tmp_path / 'x.pth'}"])


def test_wrong_vgg_file_lists_every_problem(weight_files):
  state = load_state_dict(weight_files[0])
  del state["features.0.bias"]
  state["features.2.weight"] = state["features.2.weight"].transpose(1, 0, 2, 3)[:32]
  state["features.1.running_mean"] = np.zeros(64, np.float32)  # a batch-norm VGG's key
  with pytest.raises(ConfigError) as error:
    convert.vgg16_params_from_torch(state)
  message = str(error.value)
  assert "3 problem(s)" in message
  assert "missing features.0.bias" in message
  assert "features.2.weight has shape (32, 64, 3, 3), expected (64, 64, 3, 3)" in message
  assert "unexpected key features.1.running_mean" in message
  assert "vgg16-397923af.pth" in message


def test_wrong_heads_file_lists_every_problem(weight_files):
  state = load_state_dict(weight_files[1])
  state["lin1.model.1.weight"] = np.zeros((1, 192, 1, 1), np.float32)  # alexnet's width
  state["lin5.model.1.weight"] = np.zeros((1, 512, 1, 1), np.float32)  # squeezenet has 7 heads
  del state["lin4.model.1.weight"]
  with pytest.raises(ConfigError) as error:
    convert.lpips_heads_from_torch(state)
  message = str(error.value)
  assert "lin1.model.1.weight has shape (1, 192, 1, 1)" in message
  assert "unexpected key lin5.model.1.weight" in message
  assert "missing lin4.model.1.weight" in message


def test_load_lpips_rejects_an_incomplete_file(weight_files, tmp_path):
  flat = state_dict.flatten(convert.load_lpips_params(*weight_files))
  del flat["vgg/conv3_2/kernel"]
  path = save_safetensors(tmp_path / "partial.safetensors", flat)
  with pytest.raises(ConfigError, match=r"partial\.safetensors.*\n.*missing vgg/conv3_2/kernel"):
    convert.load_lpips(path)


@pytest.fixture(scope="module")
def real_lpips_package(torch_model):
  """The installed `lpips` package, imported with a stand-in `torchvision` whose `models.vgg16()` returns our
  seeded features (torchvision itself is not installable beside this torch). Removed from sys.modules after."""
  if importlib.util.find_spec("lpips") is None:
    pytest.skip("the lpips package is not installed (pip install --no-deps lpips==0.1.4)")
  features = copy.deepcopy(torch_model[0])
  models = types.ModuleType("torchvision.models")
  models.vgg16 = lambda *args, **kwargs: types.SimpleNamespace(features=features)
  torchvision = types.ModuleType("torchvision")
  torchvision.models = models
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(sys.modules, "torchvision", torchvision)
    patch.setitem(sys.modules, "torchvision.models", models)
    for name in [name for name in sys.modules if name == "lpips" or name.startswith("lpips.")]:
      patch.delitem(sys.modules, name)
    import lpips
    yield lpips
    for name in [name for name in sys.modules if name == "lpips" or name.startswith("lpips.")]:
      del sys.modules[name]


def test_matches_real_lpips_package_with_its_released_heads(real_lpips_package, weight_files, images, flax_lpips):
  """The real `lpips.LPIPS` (its own forward and its shipped v0.1 vgg heads) against Flax with the same backbone
  and those heads read from the package's file through `lpips_heads_from_torch`."""
  model = real_lpips_package.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
  heads_path = convert.default_heads_path()
  assert heads_path is not None
  params = {"vgg": convert.vgg16_params_from_torch(load_state_dict(weight_files[0])),
            **convert.lpips_heads_from_torch(load_state_dict(heads_path))}
  assert all((head["kernel"] >= 0).all() for name, head in params.items() if name.startswith("lin"))
  with torch.no_grad():
    expected = model(*(_nchw(image, torch.float32) for image in images)).reshape(-1).numpy()
  _assert_close(flax_lpips(params, *images), expected)
