"""gpuwarden: GPU-fleet observability and alerting for LLM inference nodes."""

__version__ = "0.1.0"
