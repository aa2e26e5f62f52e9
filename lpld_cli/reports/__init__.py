"""What `lpld report` prints: storage, diversity, accuracy, lineage (rows as plain dicts)."""
