"""Reusable config presets: model sizes, data, optimizer, mesh."""
