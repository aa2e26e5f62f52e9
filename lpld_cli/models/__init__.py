"""Networks, teachers and class-wise BN statistics."""

from lpld_cli.models.factory import build_model, check_input, load_weights, model_spec

__all__ = ["build_model", "check_input", "load_weights", "model_spec"]
