"""Evaluation presets: batch size, sample grids, the checkpoint to evaluate, feature-network weight files."""

import ml_collections


def evaluation(batch_size: int = 8, num_grid_images: int = 8, **overrides) -> ml_collections.ConfigDict:
  """`checkpoint_step=0` evaluates the latest checkpoint in --mode=eval. The weights files are converted once
  (`python -m tokgen_jax.convert.{lpips,inception,i3d}`); each empty one leaves its metric (LPIPS, rFID, rFVD)
  out, with one log line saying so. `reference_statistics`: where --mode=stats writes the Inception (images) or
  I3D (videos) feature statistics of the eval split (default WORKDIR/stats/<source>_<eval_split>.npz)."""
  config = ml_collections.ConfigDict(dict(
      batch_size=batch_size, num_grid_images=num_grid_images, checkpoint_step=0, lpips_weights="",
      inception_weights="", i3d_weights="", reference_statistics=""))
  config.update(overrides)
  return config
