"""One module per pipeline stage, wiring only: each has the entry point
`run(params, paths, tracker, progress) -> dict`, calls its library function with the whole `Params`
and explicit directories, and does the stage's tracking. The order and what each stage reads and
writes: ganpipe/registry.py. Domain code lives in the wings (ganpipe/gan, ganpipe/evaluation,
ganpipe/data)."""
