"""azure-ai-ml, the optional dependency (`pip install 'onnxport[azureml]'`): whether it is
there, and the module when it is. Imported only inside functions, so that without the extra
every other command works."""

from __future__ import annotations

import importlib.util

from onnxport.errors import AzureMLNotInstalledError

INSTALL_HINT = "pip install 'onnxport[azureml]'"
COMPLETED = "Completed"
# azure-ai-ml's RunHistoryConstants.TERMINAL_STATUSES: a job in these states never moves on.
TERMINAL_STATUSES = ("Completed", "Failed", "Canceled", "NotResponding", "Paused")


def azure_ml_available() -> bool:
    """Whether azure-ai-ml is installed, without paying for its import (several seconds)."""
    try:
        return importlib.util.find_spec("azure.ai.ml") is not None
    except (ImportError, ValueError):
        return False


def require_azure_ml():
    """The `azure.ai.ml` module, or an `AzureMLNotInstalledError` with the install hint."""
    try:
        import azure.ai.ml
    except ImportError as e:
        raise AzureMLNotInstalledError(
            f"Azure Machine Learning support needs azure-ai-ml, which cannot be imported ({e})",
            hint=INSTALL_HINT,
        ) from e
    return azure.ai.ml
