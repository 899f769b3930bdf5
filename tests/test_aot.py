"""--mode=compile: real TPU compiles for pod topologies from this CPU (libtpu), per-chip memory, FLOPs, fit check."""

import importlib.util
import json
import os

import pytest

from tests.helpers import set_fields, tiny_config
from tokgen_jax import aot, trainer
from tokgen_jax.config import load_experiment
from tokgen_jax.configs import mesh
from tokgen_jax.errors import ConfigError

# libtpu takes a machine-wide lock, so these run only on request (TOKGEN_SLOW_TESTS=1 with -n 0), not under xdist.
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None or not os.environ.get("TOKGEN_SLOW_TESTS"),
                                  reason="needs libtpu and TOKGEN_SLOW_TESTS=1 (run with -n 0)")


@pytest.mark.parametrize("topology", ["v5e", "v5e:16", "tpu:2x2", "v5e:2x2x2x2", ""])
def test_malformed_topologies_are_named(topology):
  with pytest.raises(ConfigError, match="topology"):
    aot.topology_devices(topology)


@needs_libtpu
def test_topology_devices_describe_the_pod():
  devices = aot.topology_devices("v5e:4x4")
  assert len(devices) == 16 and devices[0].device_kind == "TPU v5 lite"


@needs_libtpu
def test_tiny_quickstart_compiles_and_reports_memory(tmp_path):
  summary = trainer.run(tiny_config(**{"batch_size": 8}), str(tmp_path), "compile", topology="v5e:2x4")
  step = summary["train_step"]
  assert summary["num_devices"] == 8 and summary["mesh"]["data"] == 8
  assert step["argument_bytes"] > 0 and step["flops"] > 0 and 0 < step["total_bytes"] < summary["hbm_bytes"]
  assert json.loads((tmp_path / "compile_v5e_2x4.json").read_text())["params"] == summary["params"]


@needs_libtpu
def test_flagship_generator_compiles_for_its_v5e_pod(tmp_path, capsys):
  """LlamaGen GPT-B class-conditional at batch 256 on v5e:16x16, train step and KV-cache sampler."""
  config = load_experiment("experiments/llamagen_c2i.py:size=B")
  summary = trainer.run(config, str(tmp_path), "compile")
  assert summary["topology"] == "v5e:16x16" and summary["num_devices"] == 256
  for name in ("train_step", "sampler"):
    assert 0 < summary[name]["total_bytes"] < summary["hbm_bytes"]
  # 6 · params · tokens per chip, roughly (one 256+1-token sequence per chip, fwd + bwd)
  assert 0.5 < summary["train_step"]["flops"] / (6 * summary["params"] * 256) < 3.0
  print(capsys.readouterr().out)


@needs_libtpu
@pytest.mark.skipif(not os.environ.get("TOKGEN_SLOW_TESTS"), reason="~4 min of TPU compile on a 2-core CPU; set "
                    "TOKGEN_SLOW_TESTS=1 to run it")
def test_flagship_tokenizer_compiles_for_a_v5e_pod(tmp_path, capsys):
  """MAGVIT-v2 at its paper widths (UCF-101 setup) on v5e:2x4, with 5x32x32 clips so CI compiles it in about a
  minute (the full 17x128x128 batch-256 step on v5e:16x16 takes ~6.5 minutes: see the README)."""
  config = set_fields(load_experiment("experiments/magvit2_video.py:ucf101"),
                      {"data.num_frames": 5, "data.image_size": 32, "data.eval_image_size": 32, "batch_size": 8,
                       "eval.batch_size": 8})
  summary = trainer.run(config, str(tmp_path), "compile", topology="v5e:2x4")
  assert summary["num_devices"] == 8 and 0 < summary["train_step"]["total_bytes"] < summary["hbm_bytes"]
  assert summary["params"] > 90_000_000
  print(capsys.readouterr().out)


@needs_libtpu
def test_a_config_that_does_not_fit_fails_with_the_fix(tmp_path):
  config = set_fields(load_experiment("experiments/llamagen_c2i.py:size=XL"), {"batch_size": 512})
  with pytest.raises(ConfigError, match="HBM.*fsdp"):
    trainer.run(config, str(tmp_path), "compile", topology="v5e:2x2")


@needs_libtpu
def test_a_diffusion_transformer_and_its_sampler_compile(tmp_path):
  """DiT-S/2 on 32x32x4 latents at batch 8 on v5e:2x4: the train step and the 250-step DDPM sampler (whose
  example conditions are built outside the topology's mesh)."""
  config = set_fields(load_experiment("experiments/dit_imagenet.py:size=S"),
                      {"batch_size": 16, "eval.batch_size": 16, "eval.sample_batch_size": 8})
  summary = trainer.run(config, str(tmp_path), "compile", topology="v5e:2x4")
  for name in ("train_step", "sampler"):
    assert 0 < summary[name]["total_bytes"] < summary["hbm_bytes"]
  assert summary["train_step"]["rows"] == 16 and summary["sampler"]["rows"] == 8  # the eval's rows per draw


@needs_libtpu
def test_var_sampler_under_fsdp_holds_one_scales_gathered_weights(tmp_path):
  """The 10 unrolled scale steps must not all-gather every scale's weights at once (`var_sampling`'s barrier):
  VAR-d16's width with 4 blocks, fsdp over v5e:2x4, 8 rows (one per chip, so the KV cache is small)."""
  config = set_fields(load_experiment("experiments/var_imagenet.py:depth=16"),
                      {"model.num_layers": 4, "batch_size": 8, "eval.batch_size": 8, "eval.sample_batch_size": 8})
  config.mesh = mesh.preset("fsdp")
  summary = trainer.run(config, str(tmp_path), "compile", topology="v5e:2x4")
  sampler = summary["sampler"]
  gathered_bf16_weights = 2 * summary["params"]
  # Without the barrier the temporaries were ~7x the gathered weights (d30, 6 blocks: 5.63 GiB vs 1.12 with it).
  assert sampler["rows"] == 8 and sampler["temp_bytes"] < 2 * gathered_bf16_weights
