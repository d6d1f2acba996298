"""Data sources, the transforms and validation of prepare, the prepared-data contract, sampling
and the generated-samples contract."""
