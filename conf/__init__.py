"""Hydra configuration shipped with xbench (the repository's conf/ folder)."""
