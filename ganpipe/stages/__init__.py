"""One module per pipeline stage, each with the same entry point `run(params, paths, tracker) -> dict` (see ganpipe.pipeline for the order)."""
