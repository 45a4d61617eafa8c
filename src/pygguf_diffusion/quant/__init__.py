"""Quantization: ggml's own quantizer (through the engine), the mixes, requantization and importance
matrices."""
from .policy import MIXES, Choice, Mix, Policy, TensorClass, classify, parse_override, target_names
from .qtypes import QType, all_types, lookup

__all__ = ["MIXES", "Choice", "Mix", "Policy", "QType", "TensorClass", "all_types", "classify", "lookup",
           "parse_override", "target_names"]
