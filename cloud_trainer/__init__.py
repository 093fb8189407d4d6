"""edgewatch cloud trainer: labelled images in, signed model bundles out."""

__version__ = "0.1.0"
