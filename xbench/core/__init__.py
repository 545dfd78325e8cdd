"""Shared by every layer: names, one-line errors, atomic I/O with locks and process pools, fault points, lazy exports. Imports nothing else of xbench."""
