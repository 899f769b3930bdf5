"""Runnable experiments, one a file; each docstring holds its launch command."""
