"""Diffusion: noise schedules (`schedule`), Gaussian diffusion in closed form (`gaussian`), DDPM/DDIM samplers with
classifier-free guidance (`samplers`), and the denoisers (`dit`)."""

from tokgen_jax.generators.diffusion.samplers import DiffusionSampling, guide, sample
from tokgen_jax.generators.diffusion.schedule import NoiseSchedule, make_schedule, respaced_timesteps

__all__ = ["DiffusionSampling", "guide", "sample", "NoiseSchedule", "make_schedule", "respaced_timesteps"]
