"""The MLflow adapter, above the stages and the only package that imports mlflow: `tracking.py`
(`MlflowTracker`, the run's lifecycle, the model registry) and `runinfo.py` (run names, source,
Prefect and DVC tags, the dataset input). Stages see only `ganpipe.tracker.Tracker`."""
