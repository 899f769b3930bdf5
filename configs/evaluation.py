"""Evaluation presets: batch size, sample grids, the checkpoint to evaluate, feature-network weight files, and the
named evaluation protocols a published number is measured under."""

import ml_collections

from tokgen_jax.errors import ConfigError

# Sampling protocols of the published generator numbers (NUMERICS.md). `cfg_scale` is quoted in
# `cfg_convention` (see `generators/sampling.py`), `num_samples` is how many samples the number is computed on.
PROTOCOLS = {
    # LlamaGen (Sun et al. 2024): FID at cfg 1.5 with no top-k (peers' users could not reproduce it otherwise),
    # 50,000 samples; its demo pictures at cfg 4.0, top-k 2000 (a 4x4 grid of them here: our choice).
    "llamagen_fid": dict(cfg_scale=1.5, top_k=0, top_p=1.0, num_samples=50_000),
    "llamagen_demo": dict(cfg_scale=4.0, top_k=2000, top_p=1.0, num_samples=16),
    # VAR: FID at cfg 1.5 in VAR's convention, ramped over the scales, top-p 0.96, top-k 900, 50 images per class.
    "var_fid": dict(cfg_scale=1.5, cfg_convention="var", cfg_ramp=True, top_k=900, top_p=0.96, num_samples=50_000),
}


def protocol(name: str = "custom", **settings) -> ml_collections.ConfigDict:
  """A sampling protocol: a named entry of `PROTOCOLS` (with `settings` overriding fields), or `name` with
  `settings` for an experiment's own. Every eval JSON records the protocol it was computed under.

  Fields: cfg_scale (in cfg_convention), cfg_convention ('standard' | 'var'), cfg_ramp, temperature, top_k,
  top_p, num_samples (eval samples drawn from the first eval-split conditions), use_ema (sample with the EMA
  weights when training kept them), seed."""
  return _protocol(name, dict(cfg_scale=1.0, cfg_convention="standard", cfg_ramp=False, temperature=1.0, top_k=0,
                              top_p=1.0, num_samples=0, use_ema=True, seed=0), PROTOCOLS, settings, "evaluation")


def _protocol(name: str, defaults: dict, published: dict, settings: dict, kind: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(name=name, **defaults))
  unknown = set(settings) - set(config)
  if unknown:
    raise ConfigError(f"{kind} protocol {name!r}: unknown fields {sorted(unknown)}; the fields are {sorted(config)}.")
  config.update(published.get(name, {}))
  config.update(settings)
  return config


def named_protocol(name: str, **settings) -> ml_collections.ConfigDict:
  """`protocol(name, ...)` for a published protocol only: an unknown name is an error, not a custom protocol."""
  if name not in PROTOCOLS:
    raise ConfigError(f"evaluation protocol {name!r} is not a published one; choose one of {sorted(PROTOCOLS)} "
                      f"(experiment arguments name them without the family prefix, e.g. protocol=fid).")
  return protocol(name, **settings)


# Diffusion sampling protocols: DiT (Peebles & Xie 2023) reports FID-50K with 250 DDPM steps at cfg 1.5 (guiding
# all channels here: its 3-of-4-channel quirk is `cfg_channels=3`); its demo pictures use cfg 4.0 (users who scored
# those could not reproduce the FID, DiT#8).
DIFFUSION_PROTOCOLS = {
    "dit_fid": dict(method="ddpm", num_steps=250, cfg_scale=1.5, num_samples=50_000),
    "dit_demo": dict(method="ddpm", num_steps=250, cfg_scale=4.0, num_samples=16),
}
DIFFUSION_SAMPLING_FIELDS = ("method", "num_steps", "eta", "variance", "cfg_scale", "cfg_channels", "cfg_ramp",
                             "clip_x0", "seed")


def diffusion_protocol(name: str = "custom", **settings) -> ml_collections.ConfigDict:
  """A diffusion sampling protocol, like `protocol` but with a diffusion sampler's fields: method ('ddpm' |
  'ddim'), num_steps (respaced), eta (DDIM), variance ('fixed_small' | 'fixed_large' | 'learned'), cfg_scale
  (`u + s·(c − u)`), cfg_channels (0: all), cfg_ramp ('none' | 'linear'), clip_x0 (0: none), num_samples,
  use_ema, seed, given_frames (a frame-conditioned model's eval also continues the sampled clips from their
  first `given_frames` real latent frames, scored as `pred_*`; 0: no frame prediction). A named entry of
  `DIFFUSION_PROTOCOLS` fills its fields first."""
  return _protocol(name, dict(method="ddpm", num_steps=250, eta=0.0, variance="fixed_small", cfg_scale=1.0,
                              cfg_channels=0, cfg_ramp="none", clip_x0=0.0, num_samples=0, use_ema=True, seed=0,
                              given_frames=0),
                   DIFFUSION_PROTOCOLS, settings, "diffusion")


# Masked-decoding protocols (NUMERICS.md): MaskGIT decodes ImageNet 256 in 8 steps and 512 in 12 (cosine,
# choice temperature 4.5, no guidance); MAGVIT-v2's MLM takes 12 steps for images and 24 for video; Muse 16 steps
# with guidance 10 ramped up ("warm-up").
MASKED_PROTOCOLS = {
    "maskgit_fid": dict(num_steps=8, num_samples=50_000),
    "maskgit_512_fid": dict(num_steps=12, num_samples=50_000),
    "magvit2_image": dict(num_steps=12, num_samples=50_000),
    "magvit2_video": dict(num_steps=24, num_samples=10_000),
    "muse": dict(num_steps=16, cfg_scale=10.0, cfg_ramp=True, num_samples=30_000),
}


def masked_protocol(name: str = "custom", **settings) -> ml_collections.ConfigDict:
  """A masked-decoding protocol, like `protocol` with the parallel decoder's fields: num_steps, schedule ('cosine'
  | 'linear' | 'square' | 'arccos'), choice_temperature (MaskGIT's 4.5 on the Gumbel re-masking noise),
  exit_steps (decode only the first num_steps − exit_steps steps of the schedule: early exit, MarkovGen),
  final_fill ('draw': the last step keeps its draws; 'argmax': each position left takes its most likely token;
  'mrf': MarkovGen's MRF pass fills what is left), and
  given_frames (a video model's eval also decodes the clips from their first given_frames real latent frames,
  scored as `pred_*`; 0: none). A named entry of `MASKED_PROTOCOLS` fills its fields first."""
  return _protocol(name, dict(num_steps=12, schedule="cosine", choice_temperature=4.5, exit_steps=0,
                              final_fill="draw", cfg_scale=1.0,
                              cfg_convention="standard", cfg_ramp=False, temperature=1.0, top_k=0, top_p=1.0,
                              num_samples=0, use_ema=True, seed=0, given_frames=0),
                   MASKED_PROTOCOLS, settings, "masked")


def reconstruction_protocol(use_ema: bool = True) -> ml_collections.ConfigDict:
  """A tokenizer's protocol: held-out reconstructions with the EMA weights (when training kept them) or not."""
  return ml_collections.ConfigDict(dict(name="reconstruction", use_ema=use_ema))


def evaluation(batch_size: int = 8, num_grid_images: int = 8, protocol: ml_collections.ConfigDict | None = None,
               **overrides) -> ml_collections.ConfigDict:
  """`checkpoint_step=0` evaluates the latest checkpoint in --mode=eval. The weights files are converted once
  (`python -m tokgen_jax.convert.{lpips,inception,i3d}`); each empty one leaves its metric (LPIPS, rFID, rFVD)
  out, with one log line saying so. `reference_statistics`: where --mode=stats writes the Inception (images) or
  I3D (videos) feature statistics of the eval split (default WORKDIR/stats/<source>_<eval_split>.npz); a
  generator's eval reads the real images' statistics from it to score its samples (`<set>_fid`).
  `sample_batch_size`: rows a generator's eval draws per sampler call (0: `batch_size`), the batch `--mode=compile`
  checks the sampler at.
  `protocol`: what the numbers are measured under (default `reconstruction_protocol()`; generators pass a
  sampling `protocol(...)`)."""
  config = ml_collections.ConfigDict(dict(
      batch_size=batch_size, num_grid_images=num_grid_images, checkpoint_step=0, lpips_weights="",
      inception_weights="", i3d_weights="", reference_statistics="", sample_batch_size=0,
      protocol=protocol if protocol is not None else reconstruction_protocol()))
  config.update(overrides)
  return config
