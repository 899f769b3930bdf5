"""The one error type for bad user input.

A leaf module that imports nothing, so every layer may raise it. The message must name what is wrong, where
(the config key, file or argument) and the fix.
"""


class ConfigError(ValueError):
  """A config value, path or input that the run cannot use; the message says which and how to fix it."""
