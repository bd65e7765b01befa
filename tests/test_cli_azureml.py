"""`onnxport azureml submit`: the workspace it connects to and the jobs it sends.

`connect` builds a real `MLClient` (from a workspace config.json or three names, with a
`DefaultAzureCredential`), which needs no network until a request is made. The requests go
to `azureml_support.FakeMLClient`'s fake service (`serve_jobs`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml", reason="needs the azureml extra (pip install -e '.[azureml]')")

from azure.ai.ml import MLClient
from azure.identity import DefaultAzureCredential

from azureml_support import FakeMLClient, http_error, serve_jobs, training_job
from azureml_support import write_workspace_config as workspace_config
from onnxport.azureml.job import CHECKPOINT_INPUT
from onnxport.commands.azureml import connect
from onnxport.errors import ConfigError

NAMED = ("sub-1", "rg-1", "ws-1")


# ------------------------------------------------------------------------------- connect


def test_connect_reads_the_workspace_config(tmp_path: Path) -> None:
    client = connect(None, None, None, workspace_config(tmp_path / "config.json", "ws-file"))
    assert isinstance(client, MLClient)
    assert client.subscription_id == "00000000-0000-0000-0000-000000000000"
    assert client.resource_group_name == "rg-test"
    assert client.workspace_name == "ws-file"
    assert isinstance(client._credential, DefaultAzureCredential)


def test_connect_to_a_named_workspace() -> None:
    client = connect(*NAMED, None)
    assert isinstance(client, MLClient)
    assert (client.subscription_id, client.resource_group_name, client.workspace_name) == NAMED
    assert isinstance(client._credential, DefaultAzureCredential)


@pytest.mark.parametrize("given", [(0,), (0, 1), (1, 2), (2,)])
def test_connect_with_the_workspace_half_named_is_refused(given: tuple[int, ...]) -> None:
    partial = [value if i in given else None for i, value in enumerate(NAMED)]
    with pytest.raises(ConfigError, match="no workspace given") as raised:
        connect(*partial, None)
    assert "--workspace-config" in raised.value.hint


def test_connect_with_both_a_config_and_names_is_refused(tmp_path: Path) -> None:
    config = workspace_config(tmp_path / "config.json")
    with pytest.raises(ConfigError, match="give either --workspace-config or"):
        connect(None, None, "ws-1", config)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "workspace config not found"),
        ("{not json", "cannot use the workspace config"),
        ('{"subscription_id": "s"}', "cannot use the workspace config"),
    ],
    ids=["missing", "not-json", "incomplete"],
)
def test_an_unusable_workspace_config_is_refused_naming_it(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        connect(None, None, None, path)
    assert problem in str(raised.value)
    assert str(path) in str(raised.value)
    assert raised.value.exit_code == 2


# -------------------------------------------------------------------------------- submit


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace config.json; the working directory is the test's own."""
    monkeypatch.chdir(tmp_path)
    return workspace_config(tmp_path / "config.json", "ws-convert")


def test_submit_sends_one_job_per_training_job_as_the_flags_say(
    cli, monkeypatch: pytest.MonkeyPatch, workspace: Path, tmp_path: Path
) -> None:
    names = ["train-a", "train-b"]
    # No `checkpoint` output: the default --checkpoint-output would be refused.
    service = FakeMLClient([training_job(n, outputs=("model", "logs")) for n in names])
    clients = serve_jobs(monkeypatch, service)
    run = cli("azureml", "submit", "-t", names[0], "-t", names[1], "--compute", "cpu-cluster",
              "--workspace-config", workspace, "--environment", "azureml:onnxport-env:7",
              "--checkpoint-output", "model", "--experiment-name", "nightly-onnx",
              "--no-wait")  # fmt: skip
    assert run.code == 0, run.stderr
    assert [c.workspace_name for c in clients] == ["ws-convert"]
    submitted = service.jobs.submitted
    assert list(submitted) == ["onnxport_conversion_1", "onnxport_conversion_2"]
    for job, name in zip(submitted.values(), names):
        assert job.inputs[CHECKPOINT_INPUT].path == f"azureml://jobs/{name}/outputs/model"
        assert job.environment == "azureml:onnxport-env:7"
        assert job.experiment_name == "nightly-onnx"
        assert job.compute == "cpu-cluster"
    for number, name in enumerate(names, 1):
        assert f"submitted onnxport_conversion_{number} for {name}" in run.stderr
    # Without waiting: the training jobs are read, the conversion jobs never polled.
    assert [r for r in service.jobs.requests if r[0] != "create_or_update"] == [
        ("get", name) for name in names
    ]
    assert service.jobs.downloads == []
    assert "Azure ML conversion jobs" not in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_submit_by_default_uses_the_checkpoint_output_and_the_conversion_experiment(
    cli, monkeypatch: pytest.MonkeyPatch, workspace: Path
) -> None:
    service = FakeMLClient([training_job("train-a")])
    serve_jobs(monkeypatch, service)
    run = cli("azureml", "submit", "-t", "train-a", "--compute", "cpu-cluster",
              "--workspace-config", workspace, "--no-wait")  # fmt: skip
    assert run.code == 0, run.stderr
    (job,) = service.jobs.submitted.values()
    assert job.inputs[CHECKPOINT_INPUT].path == "azureml://jobs/train-a/outputs/checkpoint"
    assert job.experiment_name == "conversion"
    assert job.environment.conda_file is not None  # built from onnxport's pinned requirements


def test_a_refused_submission_stops_with_one_error_line(
    cli, monkeypatch: pytest.MonkeyPatch, workspace: Path
) -> None:
    refused = http_error(400, "Bad Request", "UserError", "Compute gpu-x not found.")
    service = FakeMLClient(
        [training_job("train-a"), training_job("train-b")],
        failures={"create_or_update": [None, refused]},
    )
    serve_jobs(monkeypatch, service)
    run = cli("azureml", "submit", "-t", "train-a", "-t", "train-b", "--compute", "gpu-x",
              "--workspace-config", workspace, "--environment", "azureml:env:1",
              "--poll-seconds", "0")  # fmt: skip
    assert run.code == 1
    assert "Traceback" not in run.stderr
    assert "submitted onnxport_conversion_1 for train-a" in run.stderr
    (error,) = [line for line in run.stderr.splitlines() if line.startswith("error")]
    assert error.startswith(
        "error (azureml): Azure ML did not accept the conversion job onnxport-train-b: "
        "(UserError) Compute gpu-x not found."
    )
    assert list(service.jobs.submitted) == ["onnxport_conversion_1"]
    assert service.jobs.downloads == []


def test_an_unreadable_training_job_is_named_before_anything_is_submitted(
    cli, monkeypatch: pytest.MonkeyPatch, workspace: Path
) -> None:
    service = FakeMLClient([training_job("train-a")])
    serve_jobs(monkeypatch, service)
    run = cli("azureml", "submit", "-t", "train-a", "-t", "train-z", "--compute", "cpu-cluster",
              "--workspace-config", workspace, "--environment", "azureml:env:1")  # fmt: skip
    assert run.code == 1
    error = [line for line in run.stderr.splitlines() if line.startswith("error")]
    assert error == ["error (azureml): cannot read training job train-z: Job train-z not found"]
    assert "hint: check the job name and the workspace" in run.stderr
    assert service.jobs.submitted == {}


# What DefaultAzureCredential raises on a machine signed in nowhere (azure-identity 1.x).
NO_LOGIN = """DefaultAzureCredential failed to retrieve a token from the included credentials.
Attempted credentials:
\tEnvironmentCredential: EnvironmentCredential authentication unavailable. Environment variables are not fully configured.
Visit https://aka.ms/azsdk/python/identity/environmentcredential/troubleshoot to troubleshoot this issue.
\tManagedIdentityCredential: ManagedIdentityCredential authentication unavailable.
\tAzureCliCredential: Please run 'az login' to set up an account
\tAzurePowerShellCredential: PowerShell is not installed
To mitigate this issue, please refer to the troubleshooting guidelines here at https://aka.ms/azsdk/python/identity/defaultazurecredential/troubleshoot."""  # noqa: E501


def test_a_dry_run_on_a_workspace_without_an_azure_login_says_how_to_go_on(
    cli, monkeypatch: pytest.MonkeyPatch, workspace: Path, tmp_path: Path
) -> None:
    """The real MLClient signs in on its first request; only the credential is stood in for,
    refusing as DefaultAzureCredential does when no login exists."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential

    def no_login(self, *scopes, **kwargs):
        raise ClientAuthenticationError(message=NO_LOGIN)

    for method in ("get_token", "get_token_info"):
        monkeypatch.setattr(DefaultAzureCredential, method, no_login, raising=False)
    run = cli("azureml", "submit", "-t", "train-a", "--compute", "cpu-cluster",
              "--workspace-config", workspace, "--dry-run")  # fmt: skip
    assert run.code == 2
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines() == [
        "error (azureml): cannot sign in to Azure to reach workspace ws-convert: no Azure CLI "
        "login (Please run 'az login' to set up an account); no service principal in "
        "AZURE_CLIENT_ID/AZURE_TENANT_ID/...; no managed identity",
        "  hint: sign in with `az login` (or set a service principal's AZURE_* variables), or "
        "leave out --subscription/--resource-group/--workspace/--workspace-config for an "
        "offline dry run",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no job written
