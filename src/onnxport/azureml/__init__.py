"""Run the conversion as an Azure Machine Learning job, fed by a training job's checkpoint.

`create_conversion_job` (`job`) builds a command job that runs the same child process as a
local conversion (`python -m onnxport.execution`) on the training job's `checkpoint` output
and publishes into the job's `onnx_model` output; `submit_conversion_job` (`service`)
submits and polls it; `validate_conversion_job` downloads that output and checks it as a
local one is checked. The environment and the uploaded code come from `environment`.

azure-ai-ml is an optional dependency (`pip install 'onnxport[azureml]'`, see `sdk`),
imported only inside these functions: without it the rest of onnxport works.
"""

from onnxport.azureml.environment import build_environment, stage_code
from onnxport.azureml.job import (
    check_command_bindings,
    create_conversion_job,
    get_checkpoint_output_from_training_job,
    write_job_yaml,
)
from onnxport.azureml.service import submit_conversion_job, validate_conversion_job, wait_for_jobs
from onnxport.errors import AzureMLNotInstalledError

__all__ = [
    "AzureMLNotInstalledError",
    "build_environment",
    "check_command_bindings",
    "create_conversion_job",
    "get_checkpoint_output_from_training_job",
    "stage_code",
    "submit_conversion_job",
    "validate_conversion_job",
    "wait_for_jobs",
    "write_job_yaml",
]
