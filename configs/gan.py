"""Adversarial training presets: the discriminator, its optimizer and the GAN loss weights."""

import ml_collections

from tokgen_jax.configs import optimizer


def discriminator(name: str = "stylegan2d", channels: int = 64,
                  channel_multipliers: tuple[int, ...] = (2, 4, 4, 4, 4), blur: bool = True) -> ml_collections.ConfigDict:
  """StyleGAN residual discriminator: 'stylegan2d' judges images (videos frame by frame), 'stylegan3d' whole clips.

  Inputs need H and W divisible by 2**len(channel_multipliers).
  """
  return ml_collections.ConfigDict(dict(name=name, channels=channels, channel_multipliers=channel_multipliers,
                                        blur=blur))


def adversarial(enabled: bool = False, disc: ml_collections.ConfigDict | None = None, start_step: int = 0,
                learning_rate: float = 1e-4, warmup_steps: int = 0, generator_weight: float = 0.1,
                discriminator_weight: float = 0.5, lecam_weight: float = 0.05, r1_weight: float = 0.0,
                **overrides) -> ml_collections.ConfigDict:
  """Defaults are Open-MAGVIT2's ImageNet recipe (NUMERICS.md): non-saturating G loss at a fixed 0.1; D loss
  `0.5·(E relu(1-D(x)) + E relu(1+D(x̂)))` (`discriminator_weight` 0.5 on the full hinge sum, Open-MAGVIT2's
  `hinge_d_loss` with `disc_factor` 1); LeCAM 0.05 with EMA decay 0.999. Open-MAGVIT2's `disc_weight` 0.8 scales
  its adaptive generator weight, which is not built (see `tasks/adversarial.py`). google-research/magvit adds R1
  with weight 10. `enabled=False` trains the autoencoder alone (the discriminator is neither built nor
  checkpointed)."""
  config = ml_collections.ConfigDict(dict(
      enabled=enabled, discriminator=disc or discriminator(), start_step=start_step,
      generator_weight=generator_weight, discriminator_weight=discriminator_weight,
      generator_loss="non_saturating", discriminator_loss="hinge", lecam_weight=lecam_weight, lecam_decay=0.999,
      r1_weight=r1_weight,
      optimizer=optimizer.adamw(learning_rate=learning_rate, warmup_steps=warmup_steps, weight_decay=0.0,
                                b2=0.99)))
  config.update(overrides)
  return config
