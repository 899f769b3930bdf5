"""Diffusion: noise schedules, DDPM/DDIM samplers with classifier-free guidance, DiT and W.A.L.T."""
