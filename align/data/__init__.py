"""Data loading: sources (files, directories, hub ids) and normalisers for every accepted shape."""

from align.data.formats import Dataset, load_data

__all__ = ["Dataset", "load_data"]
