"""Data layer: Grain pipelines over offline photos, image folders and prepared TFDS ArrayRecord datasets, and
over video (offline lavfi renderings and the scikit-image GIF, video folders, TFDS video; see `video`).

`make_pipeline(config.data, 'train' | 'eval', global_batch_size=...)` is the entry point; `load_image_file` /
`load_video_file` read one user-given image / video for reconstruction. See `sources` for the photo split,
`pipeline` for the batch layout and `video_pipeline` for video clips.
"""

from tokgen_jax.data import shapes  # registers the shapes world's sources
from tokgen_jax.data.latents import SOURCE_NAMES as LATENT_SOURCES
from tokgen_jax.data.pipeline import make_pipeline
from tokgen_jax.data.sources import PHOTO_HELD_OUT
from tokgen_jax.data.sources import PHOTO_TRAIN
from tokgen_jax.data.transforms import load_image_file
from tokgen_jax.data.video import DEFAULT_LAVFI_SOURCES
from tokgen_jax.data.video import VIDEO_SOURCE_KINDS
from tokgen_jax.data.video import load_video_file

__all__ = ["make_pipeline", "LATENT_SOURCES", "load_image_file", "load_video_file", "PHOTO_TRAIN", "PHOTO_HELD_OUT",
           "DEFAULT_LAVFI_SOURCES", "VIDEO_SOURCE_KINDS"]
