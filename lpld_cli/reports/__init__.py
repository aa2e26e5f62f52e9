"""What `lpld report` prints: storage, diversity, accuracy, lineage (rows as plain dicts).

Knobs the command line shows live here, so `--help` reads them without importing torch.
"""

DEFAULT_REAL_PER_CLASS = 100  # real images per class behind the diversity report's MMD²
