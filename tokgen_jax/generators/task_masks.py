"""MAGVIT's conditional tasks as masks over a token grid: which positions are given and which are generated.

MAGVIT (Yu et al. 2023, §3.2 and Table 1) trains one masked model on several tasks at once: frame prediction,
frame interpolation, central inpainting and outpainting, and class-conditional generation. Each task gives
the model part of the token grid. The masked model conditions on the given tokens, never masks them, and takes
no loss on them. The grid is `(h, w)` or `(t, h, w)` in latent units; `given_frames` counts latent frames.

- `generation`: nothing given.
- `frame_prediction`: the first `given_frames` latent frames are given (video only).
- `interpolation`: the first and the last latent frame are given (video only).
- `inpainting`: everything but a central box of half the height and width is given, over all frames.
- `outpainting`: the same central box is given; the rest is generated.
"""

import jax
import jax.numpy as jnp
import numpy as np

from tokgen_jax.errors import ConfigError

TASKS = ("generation", "frame_prediction", "interpolation", "inpainting", "outpainting")
VIDEO_TASKS = ("frame_prediction", "interpolation")


def _central_box(grid: tuple[int, ...]) -> np.ndarray:
  """bool `grid`: the central `ceil(h/2) × ceil(w/2)` box over all frames."""
  h, w = grid[-2:]
  box_h, box_w = -(-h // 2), -(-w // 2)
  top, left = (h - box_h) // 2, (w - box_w) // 2
  spatial = np.zeros((h, w), bool)
  spatial[top:top + box_h, left:left + box_w] = True
  return np.broadcast_to(spatial, grid)


def given_positions(task: str, grid: tuple[int, ...], given_frames: int = 1) -> np.ndarray:
  """bool `[prod(grid)]` (row-major): the positions `task` gives."""
  grid = tuple(grid)
  check_tasks((task,), grid, given_frames)
  frames = np.arange(grid[0]).reshape((-1,) + (1,) * (len(grid) - 1)) if len(grid) == 3 else None
  if task == "generation":
    given = np.zeros(grid, bool)
  elif task == "frame_prediction":
    given = np.broadcast_to(frames < given_frames, grid)
  elif task == "interpolation":
    given = np.broadcast_to((frames == 0) | (frames == grid[0] - 1), grid)
  elif task == "inpainting":
    given = ~_central_box(grid)
  else:
    given = _central_box(grid)
  return np.ascontiguousarray(given).reshape(-1)


def check_tasks(tasks: tuple[str, ...], grid: tuple[int, ...], given_frames: int) -> None:
  unknown = [t for t in tasks if t not in TASKS]
  if not tasks or unknown:
    raise ConfigError(f"masked tasks {tuple(tasks)}: {unknown or 'none given'}; choose from {TASKS}.")
  video = [t for t in tasks if t in VIDEO_TASKS]
  if video and len(grid) != 3:
    raise ConfigError(f"masked tasks {video} need a video token grid (t, h, w); this grid is {tuple(grid)}. Use "
                      "generation, inpainting or outpainting for images.")
  if "frame_prediction" in tasks and not 1 <= given_frames < grid[0]:
    raise ConfigError(f"frame_prediction: given_frames={given_frames} must be in [1, {grid[0] - 1}] (latent frames "
                      f"of the grid {tuple(grid)}).")
  if "interpolation" in tasks and grid[0] < 3:
    raise ConfigError(f"interpolation gives the first and last latent frame; the grid {tuple(grid)} needs at least "
                      "3 frames.")


def task_table(tasks: tuple[str, ...], grid: tuple[int, ...], given_frames: int = 1) -> np.ndarray:
  """bool `[len(tasks), prod(grid)]`: the given positions of each task."""
  check_tasks(tasks, grid, given_frames)
  return np.stack([given_positions(t, grid, given_frames) for t in tasks])


def random_given(rng: jax.Array, table: np.ndarray, batch: int) -> jax.Array:
  """bool `[batch, N]`: per example one task drawn uniformly from the rows of `table`, and its given positions."""
  if len(table) == 1:
    return jnp.broadcast_to(jnp.asarray(table[0]), (batch, table.shape[1]))
  choice = jax.random.randint(rng, (batch,), 0, len(table))
  return jnp.asarray(table)[choice]
