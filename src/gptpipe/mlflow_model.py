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

from gptpipe.registry import PREDICT_DEFAULTS, check_format


class GptpipeModel(PythonModel):
    def load_context(self, context) -> None:
        from gptpipe.inference import load_model

        check_format(context.model_config, "MLflow model")
        self.model, self.tokenizer = load_model(context.artifacts["weights"],
                                                tokenizer_path=context.artifacts["tokenizer"])

    # The DataFrame hint: MLflow checks inputs against the logged signature only.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        from gptpipe.inference import encode_prompt
        from gptpipe.sampling import generate

        settings = {**PREDICT_DEFAULTS, **(params or {})}
        prompts = model_input["prompt"].tolist()
        texts = []
        for i, prompt in enumerate(prompts):
            ids = encode_prompt(self.tokenizer, str(prompt), f"prompt {i}")
            new = generate(self.model, ids, int(settings["max_new_tokens"]),
                           temperature=float(settings["temperature"]),
                           top_k=int(settings["top_k"]) or None,
                           top_p=float(settings["top_p"]), seed=int(settings["seed"]))
            texts.append(self.tokenizer.decode(new))
        return texts


mlflow.models.set_model(GptpipeModel())
