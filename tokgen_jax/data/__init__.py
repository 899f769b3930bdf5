"""Data layer: Grain pipelines over offline photos, image folders and prepared TFDS ArrayRecord datasets.

`make_pipeline(config.data, 'train' | 'eval', global_batch_size=...)` is the entry point; `load_image_file` reads
one user-given image for reconstruction. See `sources` for the photo split and `pipeline` for the batch layout.
"""

from tokgen_jax.data.pipeline import make_pipeline
from tokgen_jax.data.sources import PHOTO_HELD_OUT
from tokgen_jax.data.sources import PHOTO_TRAIN
from tokgen_jax.data.transforms import load_image_file

__all__ = ["make_pipeline", "load_image_file", "PHOTO_TRAIN", "PHOTO_HELD_OUT"]
