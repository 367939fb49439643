"""CI retraining's logic, out of scripts/ci_retrain.sh: the script only runs git
and DVC; every decision and the job summary come from here (`gptpipe ci ...`,
or `python -m gptpipe.ci ...`).

    decide.py       which revision to diff against, whether to force the download
                    stage, which stages ran: pure functions of plain data
    dvc_state.py    what DVC says, through its machine-readable interfaces
                    (`--json` commands, dvc.api, the config, dvc.lock)
    git.py          the few git questions (short shas, a file at a revision)
    mlflow_runs.py  the champion's run and the `gptpipe runs` table of given runs
    loss_curves.py  the base's and the new loss curves as a PNG
    report.py       the markdown job summary, from plain data
    commands.py     the `gptpipe ci` subcommands that glue these together
"""
