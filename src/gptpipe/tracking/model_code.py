"""The MLflow model, as code: `mlflow.pyfunc.log_model(python_model=<this file>)`.

MLflow's "models from code": the logged model holds this file's text, not a
pickled object; loading it runs this file (which needs gptpipe installed) and
reads the weights (model.pt, torch.load with weights_only=True) and the
tokenizer (JSON) from the model's artifacts. Nothing is unpickled.

predict takes a DataFrame with a `prompt` column and returns the generated
continuation of each prompt (the prompt itself not repeated). Every row is
sampled with the same `seed`, so the same prompt and seed give the same text
as `gptpipe sample --prompt P --seed S` with the same settings.
"""
import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

# The layout this file reads: artifacts `weights` and `tokenizer`, the params of
# predict_defaults(). Raise it when that changes: a model of a format the installed
# gptpipe does not read is refused, naming the gptpipe version that logged it.
FORMAT = 1
FORMAT_KEY = "gptpipe_model_format"
VERSION_KEY = "gptpipe_version"


def predict_defaults() -> dict:
    """predict's params and their defaults: the sample stage's (top_k 0 = off)."""
    from gptpipe.params import SampleParams

    sample = SampleParams()
    return {"max_new_tokens": sample.max_new_tokens, "temperature": float(sample.temperature),
            "top_k": sample.top_k or 0, "top_p": float(sample.top_p), "seed": sample.seed}


def check_format(config: dict | None, where: str) -> None:
    """Refuse a model this gptpipe cannot read, naming the version it needs."""
    from gptpipe import __version__
    from gptpipe.errors import UserError

    config = config or {}
    found = config.get(FORMAT_KEY)
    if found != FORMAT:
        logged_by = config.get(VERSION_KEY, "an unknown version")
        raise UserError(f"{where}: gptpipe model format {found!r} (logged by gptpipe "
                        f"{logged_by}); this gptpipe {__version__} reads format {FORMAT}: "
                        f"install gptpipe {logged_by} to load it")


class GptpipeModel(PythonModel):
    # This file travels with the model, so it may be older than the installed
    # gptpipe: it imports gptpipe only here, and asks the installed gptpipe
    # (its check_format) whether it reads this model's format.
    def load_context(self, context) -> None:
        config = context.model_config or {}
        try:
            from gptpipe.inference import encode_prompt, load_model
            from gptpipe.tracking.model_code import check_format as installed_check_format
            from gptpipe.sampling import generate
        except ImportError as exc:
            raise ImportError(
                f"MLflow model: logged by gptpipe {config.get(VERSION_KEY)} (model format "
                f"{config.get(FORMAT_KEY)}), which the installed gptpipe cannot load "
                f"({exc}); install gptpipe {config.get(VERSION_KEY)}") from None
        installed_check_format(config, "MLflow model")
        self.encode_prompt, self.generate = encode_prompt, generate
        self.defaults = predict_defaults()
        self.model, self.tokenizer = load_model(context.artifacts["weights"],
                                                tokenizer_path=context.artifacts["tokenizer"])

    # The DataFrame hint: MLflow checks inputs against the logged signature only.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        settings = {**self.defaults, **(params or {})}
        texts = []
        for i, prompt in enumerate(model_input["prompt"].tolist()):
            ids = self.encode_prompt(self.tokenizer, str(prompt), f"prompt {i}")
            new = self.generate(self.model, ids, int(settings["max_new_tokens"]),
                                temperature=float(settings["temperature"]),
                                top_k=int(settings["top_k"]) or None,
                                top_p=float(settings["top_p"]), seed=int(settings["seed"]))
            texts.append(self.tokenizer.decode(new))
        return texts


# MLflow runs this file as the model's code, under a module name of its own;
# imported as gptpipe.tracking.model_code (by registry.py) it only defines the above.
if __name__ != "gptpipe.tracking.model_code":
    mlflow.models.set_model(GptpipeModel())
