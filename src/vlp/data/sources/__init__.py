"""Readers of the real dataset formats; each turns its files into a :class:`SourceIndex`.

A reader only indexes: it parses the annotation files and lists one plain dict
per sample (image path, captions, boxes, answers, ...). Decoding and transforms
happen later, per sample, in :class:`vlp.data.dataset.VLDataset`.
"""

from vlp.data.sources.common import SourceIndex

__all__ = ["SourceIndex"]
