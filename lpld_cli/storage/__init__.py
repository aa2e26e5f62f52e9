"""Persistence: the content-addressed artifact store, safetensors helpers, image sets."""

from lpld_cli.storage.store import Artifact, Staging, Store, canonical_json

__all__ = ["Artifact", "Staging", "Store", "canonical_json"]
