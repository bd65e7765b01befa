"""Faults: a conversion killed at any moment, and a disk that fills up.

The fault-injection test kills the conversion child (`python -m onnxport.execution`) with
SIGKILL in every stage, through `execute_conversion` with a real SQLite MLflow store: as the
stage starts (the child stops itself there, so the kill lands in that stage whatever the
machine's speed) and at a seeded random moment after. It checks after each kill what a
pipeline relies on: nothing under the final name unless complete and valid, an earlier output
untouched unless the child had ended its last stage, the MLflow run not left RUNNING, no process
left behind, and the next run converting (each trial is the next run of the one before it;
the last runs are not killed).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from onnxport.artifact.manifest import verify_directory
from onnxport.artifact.publish import OLD_MARKER, Staging, remove_stale_partials
from onnxport.errors import ExecutionError, ExportError, PublishError
from onnxport.progress import Stage, StageEvent, Status
from support import (
    CONVERSION_TIMEOUT,
    CONVERSION_YAML,
    Project,
    conversion_children,
    leftovers,
    make_project,
    root_with_store,
    snapshot,
    write_config_dir,
)

# Kills in the conversion's stages: on one worker, not beside the concurrency test.
pytestmark = pytest.mark.xdist_group("processes")

SEED = 9
TRIALS = int(os.environ.get("ONNXPORT_FAULT_TRIALS", "12"))
"""Every stage killed as it starts, the rest at random moments; `make test-faults` runs 20."""
STAGES = ("startup", "load", "export", "validate", "smoke_test", "publish", "track")
"""`startup`: the child's imports, before its first stage; the rest are pipeline stages."""
MAX_DELAY = 1.0
"""The longest wait before a kill that lets the child go on from where it stopped."""
TERMINAL = {"FINISHED", "FAILED", "KILLED"}
DISK_FULL = ("File too large", "No space left on device")


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ------------------------------------------------------------------- publishing (fast)


def test_an_earlier_output_moved_aside_by_a_killed_publish_is_restored(copy_output) -> None:
    """A publish killed between its two renames leaves `.old-` and no final directory: the
    next run puts the earlier output back rather than deleting it."""
    final = copy_output("distilbert-token")
    before = snapshot(final)
    aside = final.parent / f".{final.name}{OLD_MARKER}{_dead_pid()}-0000abcd"
    final.rename(aside)
    remove_stale_partials(final)
    assert snapshot(final) == before
    assert leftovers(final) == []


def test_a_moved_aside_output_is_dropped_once_a_new_one_is_in_place(copy_output) -> None:
    final = copy_output("distilbert-token")
    aside = final.parent / f".{final.name}{OLD_MARKER}{_dead_pid()}-0000abcd"
    shutil.copytree(final, aside)
    before = snapshot(final)
    remove_stale_partials(final)
    assert snapshot(final) == before
    assert leftovers(final) == []


def test_an_incomplete_directory_moved_aside_is_not_restored(tmp_path: Path) -> None:
    final = tmp_path / "out"
    aside = tmp_path / f".out{OLD_MARKER}{_dead_pid()}-0000abcd"
    aside.mkdir()
    (aside / "model_fp32.onnx").write_bytes(b"half")
    remove_stale_partials(final)
    assert list(tmp_path.iterdir()) == []


def test_replacing_an_output_never_leaves_the_final_name_missing(copy_output) -> None:
    """A reader polling the final name during 30 replacements always finds it."""
    final = copy_output("distilbert-token")
    content = {p.name: p.read_bytes() for p in final.iterdir()}
    missing: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if not final.is_dir():
                missing.append(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for _ in range(30):
            with Staging(final) as staging:
                for name, data in content.items():
                    (staging.path / name).write_bytes(data)
                staging.publish()
    finally:
        stop.set()
        watcher.join()
    assert missing == [], f"the final directory was missing {len(missing)} times"
    assert verify_directory(final) == []
    assert leftovers(final) == []


# ------------------------------------------------------------ fault injection (slow)


STOP_AT_ENV = "ONNXPORT_TEST_STOP_AT"
STOPPED = re.compile(r"stopped at (\w+), pid (\d+)")
CHILD_THAT_STOPS = f"""
import os, runpy, signal

STAGE = os.environ.pop({STOP_AT_ENV!r})


def stop():
    print(f"stopped at {{STAGE}}, pid {{os.getpid()}}", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)


if STAGE == "startup":
    stop()
else:
    from onnxport.isolation.channel import Channel

    send = Channel.send

    def send_then_stop(channel, message):
        send(channel, message)
        if getattr(message, "stage", None) == STAGE and message.status == "start":
            stop()

    Channel.send = send_then_stop
runpy.run_module("onnxport.execution", run_name="__main__", alter_sys=True)
"""
"""`python -m onnxport.execution`, but it stops itself (SIGSTOP) where $ONNXPORT_TEST_STOP_AT
says: `startup`, before its imports, or as that stage starts, once it has sent the stage's
start to its parent and before any of the stage's work."""


@contextlib.contextmanager
def _children_that_stop(where: dict[str, str]) -> Iterator[None]:
    """Start each conversion child as `CHILD_THAT_STOPS`, stopping at `where[output_dir]`."""
    real = subprocess.Popen

    def stopping(command, *args, **kwargs):
        if command[1:3] == ["-m", "onnxport.execution"]:
            output_dir = command[command.index("--output-dir") + 1]
            kwargs["env"] = {**kwargs["env"], STOP_AT_ENV: where[output_dir]}
            command = [command[0], "-c", CHILD_THAT_STOPS, *command[3:]]
        return real(command, *args, **kwargs)

    subprocess.Popen = stopping
    try:
        yield
    finally:
        subprocess.Popen = real


def _stage_reached(events: list[StageEvent]) -> str:
    """The last stage the child began (`done` once it tracked, the last stage before the
    directory takes its name), from the events it sent:
    each is written to the channel before the child goes on, and what a killed child wrote
    still arrives, so they tell where it was when it died."""
    reached = "startup"
    for event in events:
        if event.status is Status.START:
            reached = event.stage.value
        elif (event.stage, event.status) == (Stage.TRACK, Status.DONE):
            reached = "done"
    return reached


def _kill(process: psutil.Process) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):  # it finished before the kill
        process.kill()


def _stopped_within(process: psutil.Process, seconds: float) -> bool:
    """Whether the child's SIGSTOP has taken effect: a SIGCONT sent before it would be lost."""
    deadline = time.monotonic() + seconds
    while process.status() != psutil.STATUS_STOPPED:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Killer:
    """SIGKILLs the conversion child once it has stopped itself at `stage`: there (`delay`
    None), or `delay` seconds after letting it go on, wherever that falls. It asserts
    nothing: this runs in the parent's reader thread, where a failure would leave the child
    stopped; `_stage_reached` tells afterwards, from the events, where the child was."""

    def __init__(self, stage: str, delay: float | None) -> None:
        self.stage = stage
        self.delay = delay
        self.events: list[StageEvent] = []
        self._timer: threading.Timer | None = None

    def on_line(self, line: str) -> None:
        stopped = STOPPED.fullmatch(line)
        if stopped is None:
            return
        child = psutil.Process(int(stopped.group(2)))
        if self.delay is None or not _stopped_within(child, 60):
            _kill(child)
            return
        child.resume()
        self._timer = threading.Timer(self.delay, _kill, (child,))
        self._timer.start()

    def wait(self) -> None:
        if self._timer is not None:
            self._timer.join()


@dataclass
class Target:
    project: Project
    earlier: dict[str, str] | None = None
    """The snapshot of the complete output under the final name, if there is one."""

    @property
    def final(self) -> Path:
        return self.project.expected_output_dir()


@dataclass
class Trial:
    target: Target
    killer: Killer
    outcome: str = ""
    reached: str = ""

    def run(self) -> Trial:
        try:
            self.target.project.call(
                force=True, on_log_line=self.killer.on_line, on_progress=self.killer.events.append
            )
            self.outcome = "completed"
        except ExecutionError as e:
            assert "SIGKILL" in str(e), e
            self.outcome = "killed"
        finally:
            self.killer.wait()
        self.reached = _stage_reached(self.killer.events)
        return self

    def __str__(self) -> str:
        name = self.target.project.config_dir.name
        when = "at its start" if self.killer.delay is None else f"+{self.killer.delay:.2f} s"
        return f"{self.killer.stage:>10} {when}: {self.outcome} in {self.reached} ({name})"


def _runs_not_running(project: Project) -> list[str]:
    statuses = [run.info.status for run in project.runs()]
    assert statuses, "no MLflow run recorded"
    return [s for s in statuses if s not in TERMINAL]


def _check_after(trial: Trial) -> None:
    target, reached = trial.target, trial.reached
    final = target.final
    if final.exists():
        assert verify_directory(final) == [], f"{final} is incomplete after {trial}"
    if target.earlier is not None:
        # Never missing (the swap is atomic), and untouched unless a complete new one won.
        assert final.is_dir(), f"the earlier output vanished ({trial})"
        if snapshot(final) != target.earlier:
            assert trial.outcome == "completed" or reached == "done", (
                f"the earlier output changed although the child died in {reached} ({trial})"
            )
    elif trial.outcome == "killed" and final.exists():
        assert reached == "done", str(trial)
    if final.exists():
        target.earlier = snapshot(final)


@pytest.fixture(scope="module")
def fault_targets(tmp_path_factory, checkpoint) -> tuple[Target, Target]:
    """Two requests on one training output and one store: A replaces its earlier output on
    every trial (force), B converts into a fresh place each time."""
    root = root_with_store(tmp_path_factory, "faults")
    a = make_project(root, "faults", checkpoint("distilbert-token"))
    config_b = write_config_dir(
        root / "config-faults-b", conversion=CONVERSION_YAML + "  seed: 1\n"
    )
    b = Project(root, config_b, a.parent, a.experiment, a.spec_fp, a.exec_fp)
    assert a.expected_output_dir() != b.expected_output_dir()
    return Target(a), Target(b)


@pytest.mark.slow
def test_sigkill_in_every_stage_loses_nothing_and_the_next_run_converts(
    fault_targets: tuple[Target, Target],
) -> None:
    """Each stage is killed as it starts, and again at seeded random moments up to
    `MAX_DELAY` s later (`TRIALS` kills in all). Trials run in pairs, one per request."""
    a, b = fault_targets
    assert verify_directory(a.project.call(force=True)) == []  # A's earlier output
    a.earlier = snapshot(a.final)
    rng = random.Random(SEED)
    plans = [(stage, None) for stage in STAGES]
    plans += [
        (STAGES[i % len(STAGES)], rng.uniform(0.0, MAX_DELAY)) for i in range(TRIALS - len(STAGES))
    ]
    rng.shuffle(plans)
    where: dict[str, str] = {}
    trials: list[Trial] = []
    with _children_that_stop(where):
        for first, second in zip(plans[::2], plans[1::2]):
            if b.final.exists():  # B converts into a fresh place every time
                shutil.rmtree(b.final)
                b.earlier = None
            pair = [Trial(t, Killer(*plan)) for t, plan in ((a, first), (b, second))]
            for trial in pair:
                where[str(trial.target.final)] = trial.killer.stage
            with ThreadPoolExecutor(len(pair)) as pool:
                done = list(pool.map(Trial.run, pair))
            for trial in done:
                _check_after(trial)
            assert _runs_not_running(a.project) == []
            assert conversion_children() == [], "a conversion process outlived its trial"
            trials += done

    print("\n" + "\n".join(str(t) for t in trials))
    at_start = [t for t in trials if t.killer.delay is None]
    assert [(t.outcome, t.reached) for t in at_start] == [
        ("killed", t.killer.stage) for t in at_start
    ]
    killed = [t for t in trials if t.outcome == "killed"]

    # The next runs, not killed: B converts, A reuses its output; no leftover remains.
    b.project.call(force=True)
    a.project.call()
    for target in (a, b):
        assert verify_directory(target.final) == []
        assert leftovers(target.final) == []
    assert _runs_not_running(a.project) == []
    assert conversion_children() == []
    statuses = [run.info.status for run in a.project.runs()]
    assert statuses.count("FAILED") >= len(killed)


# ------------------------------------------------------------------------ a full disk


@contextlib.contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Start the conversion child with RLIMIT_FSIZE = `limit` bytes (this process keeps its
    own): a write past it fails with EFBIG, Python ignoring SIGXFSZ."""
    real = subprocess.Popen

    def limited(command, *args, **kwargs):
        if any("onnxport.execution" in str(part) for part in command):

            def preexec() -> None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

            kwargs["preexec_fn"] = preexec
        return real(command, *args, **kwargs)

    previous = subprocess.Popen
    subprocess.Popen = limited
    try:
        yield
    finally:
        subprocess.Popen = previous


@pytest.mark.slow
def test_a_file_size_limit_in_the_child_is_a_clear_error_and_nothing_half_written(
    tmp_path_factory, checkpoint
) -> None:
    root = root_with_store(tmp_path_factory, "fsize")
    project = make_project(root, "fsize", checkpoint("distilbert-token"))
    with _file_size_limit(64 * 1024), pytest.raises(ExportError) as raised:
        project.call()
    assert "File too large" in str(raised.value)
    assert raised.value.hint and "ulimit" in raised.value.hint
    final = project.expected_output_dir()
    assert not final.exists()
    assert leftovers(final) == []
    (run,) = project.runs()
    assert run.info.status == "FAILED"
    assert conversion_children() == []


@contextlib.contextmanager
def _tiny_filesystem(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `directory` (root only); skip where it cannot be."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tiny tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def test_a_full_disk_is_a_clear_error_and_the_earlier_output_survives(
    cli, checkpoint, converted, tmp_path: Path
) -> None:
    """--force onto a disk with room for the earlier output but not for a second one."""
    earlier_size = sum(p.stat().st_size for p in converted("distilbert-token").directory.iterdir())
    with _tiny_filesystem(tmp_path / "disk", f"{earlier_size * 3 // 2 // 1024}k") as disk:
        earlier = disk / "out"
        shutil.copytree(converted("distilbert-token").directory, earlier)
        before = snapshot(earlier)
        run = cli(
            *("convert", checkpoint("distilbert-token"), "-o", earlier),
            *("--force", "--exporter", "torchscript"),
        )
        assert run.code == 1, run.stderr
        assert any(reason in run.stderr for reason in DISK_FULL), run.stderr
        assert "Traceback" not in run.stderr
        assert snapshot(earlier) == before
        assert sorted(p.name for p in disk.iterdir()) == ["out"], "a half-written leftover"


def test_a_full_disk_late_in_the_conversion_is_a_clear_error(
    checkpoint, converted, tmp_path: Path, monkeypatch
) -> None:
    """Room for the model but not for the files published beside it: the stage that hits
    the full disk names it (publish, with the page sizes here)."""
    from onnxport.pipeline import convert
    from onnxport.request import ConversionRequest
    from onnxport.request.config import ConversionConfig

    model_size = (converted("distilbert-token").directory / "model_fp32.onnx").stat().st_size
    with _tiny_filesystem(tmp_path / "disk", f"{(model_size + 8192) // 1024 + 4}k") as disk:
        request = ConversionRequest(
            source_path=checkpoint("distilbert-token"),
            output_dir=disk / "out",
            config=ConversionConfig().with_overrides(onnx={"exporter": "torchscript"}),
        )
        with pytest.raises((PublishError, ExportError)) as raised:
            convert(request)
        assert any(reason in str(raised.value) for reason in DISK_FULL), raised.value
        assert list(disk.iterdir()) == []


@pytest.mark.slow
def test_a_killed_parent_leaves_no_running_run_and_no_orphan(tmp_path_factory, checkpoint) -> None:
    """SIGKILL the pipeline's own process (`python -m onnxport.cli`) while its child converts:
    the child notices, marks the run FAILED and stops; nothing is published."""
    root = root_with_store(tmp_path_factory, "parent-kill")
    project = make_project(root, "parent-kill", checkpoint("distilbert-token"))
    parent = subprocess.Popen(
        [
            *(sys.executable, "-m", "onnxport.cli", "--config-dir", str(project.config_dir)),
            *("--parent-training-dir", str(project.parent), "--root-dir", str(root)),
            *("--parent-spec-fp", project.spec_fp, "--parent-exec-fp", project.exec_fp),
            *("--experiment-name", project.experiment, "--platform", "local"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        child = None
        deadline = time.monotonic() + CONVERSION_TIMEOUT
        while child is None and time.monotonic() < deadline and parent.poll() is None:
            for process in psutil.Process(parent.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if any("onnxport.execution" in part for part in process.cmdline()):
                        child = process
            time.sleep(0.05)
        assert child is not None, "the conversion child never started"
        time.sleep(2.0)  # into its imports
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        child.wait(timeout=60)  # it watches its parent once a second
    finally:
        if parent.poll() is None:
            parent.kill()
    (run,) = project.runs()
    assert run.info.status == "FAILED"
    assert not project.expected_output_dir().exists()
    assert not psutil.pid_exists(child.pid) or child.status() == psutil.STATUS_ZOMBIE
