"""Capture: record the attention calls of a model (recorder) loaded from a source."""
