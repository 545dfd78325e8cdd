"""Data: layout scanners, splits, image decoding and the decoded-image cache."""

from xbench.data.records import Records

__all__ = ["Records"]
