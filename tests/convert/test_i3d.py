"""I3D importer, checked end to end: a seeded PyTorch I3D built like pytorch-i3d's `InceptionI3d` (so its
`state_dict()` has the released file's keys), `torch.save`d, imported, and compared with the Flax `I3D`.

The torch network is written independently of the Flax module: its widths are typed out as pytorch-i3d lists
them and its "SAME" padding is pytorch-i3d's rule (pad `k - s` where the size divides by the stride, else
`k - size % s`; zeros before max-pools), not lax's. It runs in float64, so the measured difference is the Flax
float32 error alone. The clip is 2 x 18 x 56 x 40: non-square (a swapped H/W shows), odd sizes deeper in the
net (the "size % s" branch of the padding rule), and 3 time steps after MaxPool3d_5a, so the 2-step average
pool leaves 2 windows to average, as longer FVD clips do.
"""

import copy

import jax
import numpy as np
import pytest
from flax import traverse_util

from tokgen_jax.convert import i3d as convert
from tokgen_jax.convert.state_dict import load_state_dict, save_safetensors
from tokgen_jax.errors import ConfigError
from tokgen_jax.metrics.i3d import I3D

pytestmark = pytest.mark.slow  # every test cross-checks against a torch reference

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

_SHAPE = (2, 18, 56, 40, 3)
_RTOL = 1e-4  # of the largest reference value


def _same_pad(x, kernel, stride):
  """pytorch-i3d's emulation of TF "SAME" on NCTHW: pad `k - s` (size divisible by s) or `k - size % s`,
  half (rounded down) before, the rest after."""
  pads = []
  for size, k, s in zip(x.shape[2:], kernel, stride):
    total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
    pads.append((total // 2, total - total // 2))
  return F.pad(x, [p for pair in reversed(pads) for p in pair])  # F.pad lists the last axis first


class Unit3D(nn.Module):
  def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), batch_norm=True, bias=False, relu=True):
    super().__init__()
    self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
    self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
    self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if batch_norm else None

  def forward(self, x):
    x = self.conv3d(_same_pad(x, self.kernel, self.stride))
    if self.bn is not None:
      x = self.bn(x)
    return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
  def __init__(self, kernel, stride):
    super().__init__()
    self.kernel, self.stride = tuple(kernel), tuple(stride)

  def forward(self, x):
    return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
  def __init__(self, cin, out):
    super().__init__()
    self.b0 = Unit3D(cin, out[0])
    self.b1a, self.b1b = Unit3D(cin, out[1]), Unit3D(out[1], out[2], (3, 3, 3))
    self.b2a, self.b2b = Unit3D(cin, out[3]), Unit3D(out[3], out[4], (3, 3, 3))
    self.b3a, self.b3b = MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, out[5])

  def forward(self, x):
    return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
  """pytorch-i3d's endpoints and widths; forward returns (time-averaged logits, pooled Mixed_5c features)."""

  def __init__(self, num_classes=400):
    super().__init__()
    layers = [
        ("Conv3d_1a_7x7", Unit3D(3, 64, (7, 7, 7), (2, 2, 2))),
        ("MaxPool3d_2a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
        ("Conv3d_2b_1x1", Unit3D(64, 64)),
        ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3))),
        ("MaxPool3d_3a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
        ("Mixed_3b", InceptionModule(192, [64, 96, 128, 16, 32, 32])),
        ("Mixed_3c", InceptionModule(256, [128, 128, 192, 32, 96, 64])),
        ("MaxPool3d_4a_3x3", MaxPool3dSame((3, 3, 3), (2, 2, 2))),
        ("Mixed_4b", InceptionModule(128 + 192 + 96 + 64, [192, 96, 208, 16, 48, 64])),
        ("Mixed_4c", InceptionModule(192 + 208 + 48 + 64, [160, 112, 224, 24, 64, 64])),
        ("Mixed_4d", InceptionModule(160 + 224 + 64 + 64, [128, 128, 256, 24, 64, 64])),
        ("Mixed_4e", InceptionModule(128 + 256 + 64 + 64, [112, 144, 288, 32, 64, 64])),
        ("Mixed_4f", InceptionModule(112 + 288 + 64 + 64, [256, 160, 320, 32, 128, 128])),
        ("MaxPool3d_5a_2x2", MaxPool3dSame((2, 2, 2), (2, 2, 2))),
        ("Mixed_5b", InceptionModule(256 + 320 + 128 + 128, [256, 160, 320, 32, 128, 128])),
        ("Mixed_5c", InceptionModule(256 + 320 + 128 + 128, [384, 192, 384, 48, 128, 128])),
    ]
    self.endpoints = [name for name, _ in layers]
    for name, layer in layers:
      self.add_module(name, layer)
    self.logits = Unit3D(384 + 384 + 128 + 128, num_classes, batch_norm=False, bias=True, relu=False)

  def forward(self, x):
    for name in self.endpoints:
      x = getattr(self, name)(x)
    window = [min(size, extent) for size, extent in zip((2, 7, 7), x.shape[2:])]
    pooled = F.avg_pool3d(x, window, stride=1)  # dropout: identity in eval mode
    return self.logits(pooled).mean(dim=(2, 3, 4)), pooled.mean(dim=(2, 3, 4))


def _randomize(model):
  """He-normal convs, and BatchNorms whose affine and running statistics are all far from the identity."""
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.Conv3d):
        fan_in = module.weight[0].numel()
        module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
        if module.bias is not None:
          module.bias.normal_(0.0, 0.5, generator=generator)
      elif isinstance(module, nn.BatchNorm3d):
        module.weight.uniform_(0.5, 1.5, generator=generator)
        module.bias.normal_(0.0, 0.2, generator=generator)
        module.running_mean.normal_(0.0, 0.2, generator=generator)
        module.running_var.uniform_(0.5, 2.0, generator=generator)
  return model.eval()


@pytest.fixture(scope="module")
def torch_model():
  return _randomize(InceptionI3d())


@pytest.fixture(scope="module")
def weight_file(torch_model, tmp_path_factory):
  path = tmp_path_factory.mktemp("i3d_weights") / "rgb_imagenet.pt"
  torch.save(torch_model.state_dict(), path)
  return path


@pytest.fixture(scope="module")
def videos():
  return np.random.default_rng(0).uniform(-1, 1, _SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def reference(torch_model, videos):
  model = copy.deepcopy(torch_model).double()
  with torch.no_grad():
    logits, pooled = model(torch.from_numpy(videos.transpose(0, 4, 1, 2, 3)).double())
  return logits.numpy(), pooled.numpy()


@pytest.fixture(scope="module")
def flax_i3d():
  return jax.jit(lambda variables, x: I3D().apply(variables, x))


@pytest.fixture(scope="module")
def variables(weight_file):
  return convert.load_i3d_variables(weight_file)


def _assert_close(name, actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  error, scale = np.max(np.abs(actual - expected)), np.max(np.abs(expected))
  print(f"{name}: max |flax - torch| = {error:.3g}, max |torch| = {scale:.3g}, ratio {error / scale:.3g}")
  np.testing.assert_allclose(actual, expected, rtol=0, atol=_RTOL * scale)


def test_variables_match_the_flax_module_tree(variables):
  init = jax.eval_shape(I3D().init, jax.random.key(0), np.zeros((1, 8, 32, 32, 3), np.float32))
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, dict(init))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(variables))


def test_logits_and_pooled_features_match_torch(variables, videos, flax_i3d, reference):
  outputs = flax_i3d(variables, videos)
  _assert_close("logits", outputs.logits, reference[0])
  _assert_close("pooled", outputs.pooled, reference[1])
  assert outputs.features is outputs.logits


def test_cli_converts_once_to_safetensors(weight_file, variables, tmp_path):
  out = convert.main([f"--weights={weight_file}", f"--out={tmp_path / 'i3d_kinetics400.safetensors'}"])
  loaded = convert.load_i3d(out)
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_cli_rejects_other_output_suffix(weight_file, tmp_path):
  with pytest.raises(ConfigError, match="safetensors"):
    convert.main([f"--weights={weight_file}", f"--out={tmp_path / 'i3d.pth'}"])


def test_data_parallel_prefix_and_step_counters_are_ignored(weight_file, variables):
  state = load_state_dict(weight_file)
  assert any(key.endswith("num_batches_tracked") for key in state)  # saved by today's BatchNorm3d
  wrapped = convert.i3d_variables_from_torch({f"module.{key}": value for key, value in state.items()})
  jax.tree.map(np.testing.assert_array_equal, wrapped, variables)


def test_wrong_file_lists_every_problem(weight_file):
  state = load_state_dict(weight_file)
  del state["Mixed_4c.b1b.bn.running_var"]
  state["Mixed_3b.b2b.conv3d.weight"] = np.zeros((32, 16, 5, 5, 5), np.float32)  # GoogLeNet's 5x5, not inflated 3x3
  state["Mixed_3b.b3a.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ConfigError) as error:
    convert.i3d_variables_from_torch(state)
  message = str(error.value)
  assert "3 problem(s)" in message
  assert "missing Mixed_4c.b1b.bn.running_var (shape (224,))" in message
  assert "Mixed_3b.b2b.conv3d.weight has shape (32, 16, 5, 5, 5), expected (32, 16, 3, 3, 3)" in message
  assert "unexpected key Mixed_3b.b3a.weight" in message
  assert "rgb_imagenet.pt" in message


def test_other_head_needs_num_classes(weight_file):
  """A 157-class (Charades) head is refused for Kinetics-400 and accepted when its size is asked for."""
  state = load_state_dict(weight_file)
  state["logits.conv3d.weight"] = np.zeros((157, 1024, 1, 1, 1), np.float32)
  state["logits.conv3d.bias"] = np.zeros(157, np.float32)
  with pytest.raises(ConfigError, match=r"logits\.conv3d\.weight has shape \(157, 1024, 1, 1, 1\), expected "
                     r"\(400, 1024, 1, 1, 1\)(.|\n)*num_classes"):
    convert.i3d_variables_from_torch(state)
  assert convert.i3d_variables_from_torch(state, num_classes=157)["params"]["logits"]["kernel"].shape == (1024, 157)


def test_a_file_of_another_network_is_named():
  with pytest.raises(ConfigError, match=r"no pytorch-i3d key found; the file's keys begin \['features\.0\.weight'\]"):
    convert.i3d_variables_from_torch({"features.0.weight": np.zeros((64, 3, 3, 3), np.float32)})


def test_load_i3d_rejects_an_incomplete_file(variables, tmp_path):
  flat = traverse_util.flatten_dict(variables, sep="/")
  del flat["batch_stats/Mixed_5c/b3b/bn/mean"]
  path = save_safetensors(tmp_path / "partial.safetensors", flat)
  with pytest.raises(ConfigError, match=r"partial\.safetensors.*\n.*missing batch_stats/Mixed_5c/b3b/bn/mean"):
    convert.load_i3d(path)
