"""All of gptpipe's MLflow code, one idea per module:

    store        where runs go (the tracking URI), is it reachable, retry_locked, store_lock
    runs         Tracker: the client that creates, reopens, logs to and ends runs
    datasets     the run's data (train, val, raw corpus) as MLflow datasets
    background   BackgroundRun: the train stage's run, opened in a process of its own
    process      that process (idle priority) and RemoteTracker, runs.Tracker over a socket
    wire         how calls, values and errors cross that socket: JSON, never pickle
    registry     log and register the model, the champion alias, model references
    model_code   the MLflow model itself ("models from code": this file is logged)
    runs_table   `gptpipe runs`: an experiment's runs as one table

Nothing is imported here: stages import the modules they need, and mlflow is
imported only where it is used (`gptpipe.tracking.store` never imports it).
"""
