"""Dataset writers: pure converters (``to_*``) and the thin code that writes their output to disk."""
