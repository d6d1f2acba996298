"""Data sources, validation and the prepared-data contract."""
