"""Where MLflow models logged by gptpipe 0.1.x look for the installed gptpipe's
format check: their code file (logged with the model) imports it from here. The
models-from-code file itself is tracking/model_code.py."""
from .tracking.model_code import check_format  # noqa: F401 - gptpipe 0.1.x models import it
