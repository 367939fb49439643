"""gptpipe: a reproducible DVC + MLflow pipeline for the lecture's GPT."""

# The one place the version lives (pyproject.toml reads it). 0.2: model files hold
# their tokenizer (checkpoints.MODEL_FORMAT); 0.1.x files still load.
__version__ = "0.2.0"
