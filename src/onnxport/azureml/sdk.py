"""azure-ai-ml, the optional dependency (`pip install 'onnxport[azureml]'`): whether it is
there, and the module when it is. Imported only inside functions, so that without the extra
every other command works."""

from __future__ import annotations

import importlib.util
import re

from onnxport.errors import AzureMLInputError, AzureMLNotInstalledError, one_line

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


# DefaultAzureCredential's report, one line per credential it tried:
# "\tAzureCliCredential: Azure CLI not found on path".
_TRIED_CREDENTIAL = re.compile(r"^\s*(\w+Credential): (.*)$", re.MULTILINE)
_CREDENTIAL_NAMES = {
    "AzureCliCredential": "no Azure CLI login",
    "EnvironmentCredential": "no service principal in AZURE_CLIENT_ID/AZURE_TENANT_ID/...",
    "ManagedIdentityCredential": "no managed identity",
}


def missing_credential(error: Exception, workspace: str, *, dry_run: bool) -> AzureMLInputError:
    """A sign-in that found no credential (`ClientAuthenticationError`), as one line: which
    credentials were missing, and the ways on (sign in; for a dry run, no workspace)."""
    tried = dict(_TRIED_CREDENTIAL.findall(str(error)))
    missing = [
        f"{said} ({one_line(tried[name], 60)})" if name == "AzureCliCredential" else said
        for name, said in _CREDENTIAL_NAMES.items()
        if name in tried
    ]
    found = "; ".join(missing) if missing else one_line(error, 200)
    ways = "sign in with `az login` (or set a service principal's AZURE_* variables)"
    if dry_run:
        ways += (
            ", or leave out --subscription/--resource-group/--workspace/--workspace-config "
            "for an offline dry run"
        )
    return AzureMLInputError(
        f"cannot sign in to Azure to reach workspace {workspace}: {found}", hint=ways
    )
