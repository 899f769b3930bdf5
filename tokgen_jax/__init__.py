"""tokgen_jax: train and evaluate visual tokenizers and the generators on top of them, in JAX/Flax."""

__version__ = "0.1.0"
