"""MLflow tracking: the store, the conversion run and what is logged to it.

The parent prepares the store (runs the database migration once, under a lock, before any
child starts), creates the run with its tags (built by `request.lineage`), and makes sure it
ends FINISHED or FAILED. The child continues the run (`MLFLOW_RUN_ID`) and logs parameters,
metrics, artifacts and the ONNX model itself.

`store`: the store, experiments and runs (with retries on a locked database);
`conversion`: what a conversion logs, and the registration of its model;
`reuse`: the run of a reused conversion, written at once or by a detached recorder;
`benchmark`: what `onnxport benchmark` logs.
"""
