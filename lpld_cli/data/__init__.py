"""Real datasets, presets and replayable augmentations."""
