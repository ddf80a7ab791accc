"""Renderers take a finished Report; nothing upstream prints."""
