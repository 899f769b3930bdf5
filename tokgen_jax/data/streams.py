"""The one global training stream and its per-process slices, shared by every pipeline (images, video, latents).

`global_stream` orders the records; `position_rng` gives each stream position its augmentation randomness;
`local_batch_size` checks the global batch against the process count; `shard_and_pad` splits an eval pass into
one equally long block per process. None of them depends on how many processes there are beyond the slice each
takes, so batches are the same for any process layout.
"""

import math

import grain
import numpy as np

from tokgen_jax.errors import ConfigError

SPLITS = ("train", "eval")
PADDING = (-1, 0, 0)  # eval spec (record index, top, left) of a padding element


def local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
  """This process's share of the global batch (ConfigError unless the processes split it evenly)."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count}).")
  if global_batch_size < 1:
    raise ConfigError(f"config.batch_size must be positive, got {global_batch_size}.")
  if global_batch_size % process_count:
    suggestion = math.ceil(global_batch_size / process_count) * process_count
    raise ConfigError(
        f"config.batch_size={global_batch_size} is not divisible by the {process_count} data-loading processes "
        f"(jax.process_count()); every process loads an equal share. Set config.batch_size to a multiple of "
        f"{process_count}, e.g. {suggestion}.")
  return global_batch_size // process_count


def global_stream(num_records: int, seed: int, global_batch_size: int, process_index: int,
                  process_count: int) -> grain.MapDataset:
  """This process's elements `(record index, global position)` of the one global training stream.

  The global stream is the records shuffled with `seed` (reshuffled every epoch: shuffle before repeat gives epoch
  e the seed + e), repeated forever. Global batch b holds positions `[b·G, (b+1)·G)`; process p takes the
  contiguous slice `[b·G + p·L, b·G + (p+1)·L)` (L = G / process count), which `sharding.global_batch` places on
  its devices. So the global batches, and everything drawn from a position, are the same for any number of
  processes: 2 processes x 2 devices train exactly as 1 process x 4 devices, and a run resumes on another
  topology with the same data.
  """
  if num_records < 1:
    raise ConfigError("the training split is empty; add examples to it.")
  order = grain.MapDataset.range(num_records).shuffle(seed=seed).repeat()
  local = global_batch_size // process_count

  def element(index: int) -> tuple[int, int]:
    position = (index // local) * global_batch_size + process_index * local + index % local
    return int(order[position]), position

  return grain.MapDataset.range(len(order)).map(element)


def position_rng(seed: int, position: int) -> np.random.Generator:
  """The augmentation randomness of one global stream position (independent of process layout)."""
  return np.random.default_rng(np.random.SeedSequence([seed, position]))


def shard_and_pad(specs: list, local_batch_size: int, process_index: int, process_count: int) -> list:
  """This process's contiguous block of `specs`, padded with `PADDING` to the batch count all processes share."""
  per_process = math.ceil(len(specs) / process_count)
  num_batches = math.ceil(per_process / local_batch_size)
  block = specs[process_index * per_process:(process_index + 1) * per_process]
  return block + [PADDING] * (num_batches * local_batch_size - len(block))
