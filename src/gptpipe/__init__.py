"""gptpipe: a reproducible DVC + MLflow pipeline for the lecture's GPT."""

__version__ = "0.1.0"
