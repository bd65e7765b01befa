"""Serve what was converted: text in, answers out, through MLflow's model server.

`package` makes a published variant a text-level MLflow model (a pyfunc around
`OnnxPredictor`, carrying the onnxport code and requiring no torch): saved for
`onnxport serve OUT_DIR`, logged (and registered) by every tracked conversion. `model` is that
pyfunc; `server` runs it behind MLflow's scoring server with request limits.

Importing this package imports nothing heavy: the command line reads its defaults.
"""

DEFAULT_MAX_BATCH = 64
"""The most texts one request may hold, unless the server is told otherwise."""
DEFAULT_MAX_BODY_KB = 1024
"""The largest request body `onnxport serve` reads, in KiB."""
