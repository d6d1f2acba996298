"""Operations around the pipeline: MLflow tracking (the only MLflow importer), champion promotion, the local servers, DVC status and sweep planning."""
