"""The error types the command line reports as one clear line: bad user input, and checkpoints it cannot write.

A leaf module that imports nothing, so every layer may raise it. The message must name what is wrong, where
(the config key, file or argument) and the fix.
"""


class ConfigError(ValueError):
  """A config value, path or input that the run cannot use; the message says which and how to fix it."""


class CheckpointError(RuntimeError):
  """A checkpoint could not be written (full disk, permissions) or read (damaged files); the message names the
  step, the file or the last complete checkpoint, and the fix."""
