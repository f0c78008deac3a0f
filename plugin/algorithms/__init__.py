"""One module per Processing algorithm, sharing the parameters in ``base``."""
