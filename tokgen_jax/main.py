"""Command line: `tokgen --config=experiments/quickstart.py:local --workdir=/tmp/run --mode=train`.

`--config.key=value` overrides any field of the (locked) experiment config. Multi-process runs (several hosts,
or several processes on one machine) call `jax.distributed.initialize` first: on TPU VMs with no flags (the
runtime knows the topology); elsewhere with --coordinator_address, --num_processes and --process_id, or the
environment variables TOKGEN_COORDINATOR, TOKGEN_NUM_PROCESSES and TOKGEN_PROCESS_ID.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment file and argument, e.g. experiments/quickstart.py:local.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, eval results and samples.")
_MODE = flags.DEFINE_string(
    "mode", "train", "What to run: train, eval, compile, bench, or a mode of the experiment's task (a tokenizer's "
    "sample and stats, a generator's encode (alias tokenize) and sample); see tokgen_jax/trainer.py.")
_TOPOLOGY = flags.DEFINE_string(
    "topology", "", "--mode=compile: TPU topology to compile for, e.g. v5e:16x16 (default: config.topology).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", os.environ.get("TOKGEN_COORDINATOR"),
    "host:port of process 0 for multi-process runs (env TOKGEN_COORDINATOR).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", int(os.environ.get("TOKGEN_NUM_PROCESSES", "0")) or None,
    "Number of processes of a multi-process run (env TOKGEN_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", int(os.environ["TOKGEN_PROCESS_ID"]) if "TOKGEN_PROCESS_ID" in os.environ else None,
    "This process's index in a multi-process run (env TOKGEN_PROCESS_ID).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with no arguments (TPU VM pods).")


def _initialize_distributed() -> None:
  import jax  # imported after flag parsing so XLA_FLAGS set by launchers take effect

  if _COORDINATOR.value:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      sys.exit("--coordinator_address needs --num_processes and --process_id (or TOKGEN_NUM_PROCESSES and "
               "TOKGEN_PROCESS_ID).")
    # Cross-process collectives on CPU need gloo; the setting is ignored by TPU and GPU backends. Asking for the
    # backend here would initialize it before jax.distributed, which must come first.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required, e.g. "
                         "--config=experiments/quickstart.py:local --workdir=/tmp/quickstart")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # library INFO chatter (Orbax) hides the progress lines
  _initialize_distributed()
  from tokgen_jax import trainer
  from tokgen_jax.errors import CheckpointError, ConfigError

  try:
    summary = trainer.run(_CONFIG.value, _WORKDIR.value, _MODE.value, topology=_TOPOLOGY.value)
  except (ConfigError, CheckpointError, FileNotFoundError) as error:
    logging.error("%s", error)
    sys.exit(f"error: {error}")
  logging.info("done: %s", summary)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a --config.key=value override of a key the config lacks as one error line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:  # a value of the wrong type, an unknown flag
    sys.exit(f"error: {error}. Run with --helpfull for every flag.")
  except (KeyError, AttributeError) as error:
    overrides = [arg for arg in argv[1:] if arg.startswith("--config.")]
    sys.exit(f"error: a --config override names a field the experiment config does not have ({overrides}): "
             f"{' '.join(str(error.args[0] if error.args else error).split())}. Fix the key; the experiment file lists "
             f"every field.")


def run_main() -> None:
  """Entry point of the `tokgen` console script."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run_main()
