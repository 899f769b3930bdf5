"""`config.guard`: what training does about non-finite steps, and an optional record of the batches it saw.

Fields (defaults in `tokgen_jax.guard.DEFAULTS`):
  nonfinite: a step whose loss, metrics or updated state hold NaN/Inf either stops the run ('stop': the message
    names the step, the terms and the last good checkpoint) or is skipped ('skip': the update is dropped inside
    the compiled step, the batch is consumed, and `skipped_steps` is counted on the log line).
  max_skips_in_a_row: under 'skip', more consecutive skipped steps than this stop the run (it has diverged).
  record_batches: append a CRC32 of every batch (process 0's share) to WORKDIR/batches.jsonl, to check that a
    resumed run saw exactly the batches of an uninterrupted one.
"""

import ml_collections

from tokgen_jax import guard as guard_lib


def guard(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(guard_lib.DEFAULTS | overrides)
