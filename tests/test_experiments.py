"""Paper-size generator experiments build (abstractly, no weights in memory) with the published sizes."""

import pytest

from tokgen_jax import run as run_lib
from tokgen_jax.config import load_experiment
from tokgen_jax.errors import ConfigError


@pytest.mark.parametrize("size, low, high", [("B", 105e6, 115e6), ("L", 330e6, 355e6)])
def test_llamagen_c2i_parameter_count(size, low, high, tmp_path):
  """LlamaGen Table 1: GPT-B 111M, GPT-L 343M parameters (16384-entry VQ vocabulary, 1000 classes)."""
  run = run_lib.setup(load_experiment(f"experiments/llamagen_c2i.py:size={size}"), str(tmp_path))
  params = run_lib.count_params(run.abstract_state)
  print(f"\nllamagen_c2i GPT-{size}: {params:,} parameters, token shape {run.task.token_shape}")
  assert run.task.token_shape == (16, 16) and run.task.model.vocab_sizes == (16384,)
  assert low < params < high


def test_lfq_entropy_annealing_is_settable_on_the_locked_config():
  """The LFQ preset carries the annealing keys, so `--config.model.quantizer.entropy_anneal_steps=N` reaches the
  module (a locked config refuses keys a preset lacks)."""
  from tokgen_jax import tasks  # pylint: disable=import-outside-toplevel
  config = load_experiment("experiments/magvit2_video.py:local")
  assert config.model.quantizer.entropy_anneal_steps == 0
  config.model.quantizer.entropy_anneal_steps = 2000
  config.model.quantizer.entropy_weight_start = 0.3
  quantizer = tasks.build_tokenizer(config.model).quantizer
  assert quantizer.annealing and quantizer.entropy_anneal_steps == 2000 and quantizer.entropy_weight_start == 0.3


def test_llamagen_protocols_are_its_published_settings():
  """LlamaGen's FID protocol: cfg 1.5, no top-k, 50,000 samples; its demo: cfg 4.0, top-k 2000 (NUMERICS.md)."""
  from tokgen_jax.tasks import generator as generation  # pylint: disable=import-outside-toplevel
  fid = load_experiment("experiments/llamagen_c2i.py:protocol=fid").eval.protocol
  assert (fid.name, fid.cfg_scale, fid.top_k, fid.top_p, fid.num_samples) == ("llamagen_fid", 1.5, 0, 1.0, 50_000)
  config = load_experiment("experiments/llamagen_c2i.py")
  demo, sample = config.eval.protocol, config.sample
  assert (demo.name, demo.cfg_scale, demo.top_k) == ("llamagen_demo", 4.0, 2000)
  assert (sample.protocol, sample.cfg_scale, sample.top_k) == ("llamagen_demo", 4.0, 2000)
  assert generation.settings_from_config(fid).cfg_scale == 1.5
  assert not generation.settings_from_config(fid, guided=False).guided


def test_var_protocol_converts_to_the_sampler_scale_and_unknown_protocols_fail():
  from tokgen_jax.tasks import generator as generation  # pylint: disable=import-outside-toplevel
  from tokgen_jax.configs import evaluation  # pylint: disable=import-outside-toplevel
  var = evaluation.named_protocol("var_fid")
  settings = generation.settings_from_config(var)
  assert (settings.cfg_scale, settings.cfg_ramp, settings.top_k, settings.top_p) == (2.5, True, 900, 0.96)
  with pytest.raises(ConfigError, match="not a published one"):
    evaluation.named_protocol("llamagen_best")
  with pytest.raises(ConfigError, match="unknown fields"):
    evaluation.protocol("mine", cfg=2.0)
  with pytest.raises(ConfigError, match="choose one of"):
    load_experiment("experiments/llamagen_c2i.py:protocol=best")


@pytest.mark.parametrize("experiment, low, high, latent", [
    ("experiments/dit_imagenet.py:size=XL", 675e6 * 0.99, 675e6 * 1.01, (32, 32, 4)),  # DiT-XL/2: 675M
    ("experiments/dit_imagenet.py:size=B", 130e6 * 0.99, 130e6 * 1.01, (32, 32, 4)),   # DiT-B/2: 130M
    ("experiments/walt_ucf101.py", 214e6 * 0.98, 214e6 * 1.02, (5, 16, 16, 8)),        # seed 000: 214M
])
def test_diffusion_paper_sizes(experiment, low, high, latent, tmp_path):
  run = run_lib.setup(load_experiment(experiment), str(tmp_path))
  params = run_lib.count_params(run.abstract_state)
  print(f"\n{experiment}: {params:,} parameters, latents {run.task.latent_shape}")
  assert run.task.latent_shape == latent and low < params < high


def test_dit_protocols_are_its_published_settings():
  fid = load_experiment("experiments/dit_imagenet.py:protocol=fid").eval.protocol
  assert (fid.name, fid.method, fid.num_steps, fid.cfg_scale, fid.num_samples) == ("dit_fid", "ddpm", 250, 1.5, 50_000)
  demo = load_experiment("experiments/dit_imagenet.py").sample
  assert (demo.protocol, demo.cfg_scale, demo.cfg_channels) == ("dit_demo", 4.0, 0)
  with pytest.raises(ConfigError, match="choose demo or fid"):
    load_experiment("experiments/dit_imagenet.py:protocol=best")


@pytest.mark.parametrize("factorization, positions, planes", [
    ("four_plane", 672, {"latents_xy0": [16, 16, 8], "latents_xy1": [16, 16, 8], "latents_tw": [5, 16, 8],
                         "latents_th": [5, 16, 8]}),
    ("tri_plane", 416, {"latents_xy": [16, 16, 8], "latents_tw": [5, 16, 8], "latents_th": [5, 16, 8]}),
    ("volumetric", 1280, {"latents": [5, 16, 16, 8]}),
])
def test_fourplane_paper_size_latents(factorization, positions, planes):
  """Seed 000: 17×128² clips → a 5×16×16 latent; four-plane keeps 672 positions of volumetric's 1280."""
  from tokgen_jax import tasks  # pylint: disable=import-outside-toplevel
  described = tasks.build(load_experiment(f"experiments/fourplane_video.py:k600,tokenizer,factorization={factorization}"
                                          )).describe()
  assert described["latent_positions"] == positions and described["latent_grid"] == [5, 16, 16]
  assert {name: spec["shape"] for name, spec in described["latents"].items()} == planes


@pytest.mark.slow  # three 214M abstract builds; PlaneWALT's own test checks the 672 tokens quickly
@pytest.mark.parametrize("factorization, tokens", [("four_plane", 672), ("tri_plane", 416), ("volumetric", 1280)])
def test_fourplane_paper_size_generators_read_the_seeds_token_counts(factorization, tokens, tmp_path):
  """Seed 000: the 214M generator reads 672 plane tokens instead of volumetric's 1280 (patch 1), same width and
  depth for every latent."""
  run = run_lib.setup(load_experiment(f"experiments/fourplane_video.py:k600,factorization={factorization}"),
                      str(tmp_path))
  described = run.task.describe()
  params = run_lib.count_params(run.abstract_state)
  print(f"\nfourplane_video {factorization}: {described['sequence_length']} tokens, {params:,} parameters")
  assert described["sequence_length"] == tokens
  assert 200e6 < params < 230e6


def test_fourplane_lavfi_variants_train_on_the_offline_renders():
  from tokgen_jax import tasks  # pylint: disable=import-outside-toplevel
  tokenizer = load_experiment("experiments/fourplane_video.py:tokenizer,lavfi")
  assert tokenizer.data.source == "lavfi" and tokenizer.model.factorization == "four_plane"
  task = tasks.build(load_experiment("experiments/fourplane_video.py:lavfi,factorization=tri_plane"))
  assert task.conditioning == "none" and task.frame_conditioned and task.latent_frames == 5
  assert task.layout.names == ("latents_th", "latents_tw", "latents_xy") and task.latent_shape == (144, 8)
  assert task.sample_settings(load_experiment("experiments/fourplane_video.py:lavfi").eval.protocol).cfg_scale == 1.0
  with pytest.raises(ConfigError, match="lavfi clips are the local data"):
    load_experiment("experiments/fourplane_video.py:k600,lavfi")


@pytest.mark.parametrize("variant, positions", [("ucf101", 1280), ("imagenet256", 256)])
def test_magvit2_mlm_is_307m_with_factorized_2_18_tokens(variant, positions, tmp_path):
  """Seed 004: MAGVIT-v2's MLM has 307M parameters over 2^18 LFQ tokens factorized as 2 × 2^9; the unfactorized
  vocabulary alone would take 268.7M parameters of table and head."""
  run = run_lib.setup(load_experiment(f"experiments/magvit2_mlm.py:{variant}"), str(tmp_path))
  params = run_lib.count_params(run.abstract_state)
  layout = run.task.describe()
  print(f"\nmagvit2_mlm:{variant}: {params:,} parameters; embeddings {layout['embedding_parameters']:,} factorized, "
        f"{layout['unfactorized_embedding_parameters']:,} unfactorized")
  assert run.task.model.vocab_sizes == (512, 512) and run.task.codebook_bits == 18
  assert run.task.model.num_tokens == positions
  assert abs(params - 307e6) < 0.01 * 307e6
  assert layout["unfactorized_embedding_parameters"] == (2**18 + 1) * 1024 + 2**18


def test_masked_experiments_build_with_their_protocols(tmp_path):
  """MaskGIT ImageNet decodes in 8 steps (its FID protocol); the shapes MarkovGen run replaces 5 of 12 steps and
  starts from the masked run."""
  maskgit = load_experiment("experiments/maskgit_imagenet.py")
  assert maskgit.eval.protocol.num_steps == 8 and maskgit.model.block == "bert"
  markovgen = load_experiment("experiments/markovgen_shapes.py:local")
  assert markovgen.markovgen.exit_steps == markovgen.eval.protocol.exit_steps == 5
  assert markovgen.init_from == "/tmp/maskgit_shapes/masked"
  video = load_experiment("experiments/mlm_video.py:local")
  assert video.eval.protocol.given_frames == 1 and "frame_prediction" in video.loss.tasks


# VAR's own layer-for-layer counts (VAR: q and v biases, none on k): the paper rounds d24's 1.033B to 1.0B.
@pytest.mark.parametrize("depth, expected", [(16, 310_283_520), (20, 600_917_136), (24, 1_033_399_360),
                                             (30, 2_010_020_356)])
def test_var_imagenet_depths_have_vars_parameter_counts(depth, expected, tmp_path):
  """VAR-d16 / d20 / d24 / d30: 310M / 600M / 1.0B / 2.0B over 680 tokens in 10 scales, 4096 codes of 32."""
  run = run_lib.setup(load_experiment(f"experiments/var_imagenet.py:depth={depth}"), str(tmp_path))
  params = run_lib.count_params(run.abstract_state)
  print(f"\nvar_imagenet:depth={depth}: {params:,} parameters")
  assert params == expected
  layout = run.task.describe()
  assert layout["sequence_length"] == 680 and layout["steps_per_sample"] == 10 and layout["vocab_size"] == 4096
  assert run.config.eval.protocol.name == "var_fid" and run.task.sample_settings(run.config.eval.protocol).cfg_scale == 2.5


def test_var_shapes_variants_build():
  tokenizer = load_experiment("experiments/var_shapes.py:tokenizer")
  assert tokenizer.model.quantizer.name == "msrq" and tuple(tokenizer.model.quantizer.scales)[-1] == 8
  finest = load_experiment("experiments/var_shapes.py:tokenizer,scales=finest")
  assert tuple(finest.model.quantizer.scales) == (8,)
  assert tokenizer.model.quantizer.codebook_per_scale and not finest.model.quantizer.codebook_per_scale
  shared = load_experiment("experiments/var_shapes.py:tokenizer,codebook=shared")
  assert not shared.model.quantizer.codebook_per_scale
  assert not load_experiment("experiments/var_shapes.py:local,codebook=shared").tokenizer.experiment.model.quantizer[
      "codebook_per_scale"]
  with pytest.raises(ConfigError, match="codebook='tied'"):
    load_experiment("experiments/var_shapes.py:tokenizer,codebook=tied")
  raster = load_experiment("experiments/var_shapes.py:raster")
  local = load_experiment("experiments/var_shapes.py:local")
  assert raster.model.embed_dim == local.model.embed_dim and raster.model.num_layers == local.model.num_layers
  assert local.task == "var" and raster.task == "generator" and local.eval.protocol.cfg_ramp
  with pytest.raises(ConfigError, match="scales='coarse'"):
    load_experiment("experiments/var_shapes.py:tokenizer,scales=coarse")
