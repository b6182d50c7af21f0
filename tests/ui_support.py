"""Helpers of the browser end-to-end test: a `dagster dev` process on a loopback port, its
GraphQL API, and where screenshots go."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("WYCRYST_CHROMIUM", "/usr/bin/chromium"))


def artifacts_dir() -> Path:
    """Screenshots go here (``WYCRYST_TEST_ARTIFACTS``, default ``.wycryst/test-artifacts/ui``)."""
    out = Path(os.environ.get("WYCRYST_TEST_ARTIFACTS", REPO_ROOT / ".wycryst" / "test-artifacts" / "ui"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_session_default_signals() -> None:
    """In the child before exec: its own process group, and SIGINT/SIGTERM at their defaults.
    A shell's background job inherits SIGINT ignored, and `dagster dev` maps SIGTERM onto the
    SIGINT handler, so without this it would ignore SIGTERM too."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class DagsterDev:
    """``dagster dev`` (webserver + daemon) in its own process group, logging to a file."""

    def __init__(self, log_path: Path, env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        dagster = Path(sys.executable).parent / "dagster"
        cmd = [str(dagster) if dagster.exists() else "dagster", "dev", "-m", "wycryst_assets",
               "-h", "127.0.0.1", "-p", str(self.port)]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, preexec_fn=_own_session_default_signals)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/server_info", timeout=5).ok:
                    return
            time.sleep(1.0)
        raise TimeoutError(f"dagster dev did not answer /server_info within {timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL when it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        # the daemon and run workers share the group: make sure none survives
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()

    def log(self, tail: int = 20000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "(no log)"

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 60.0) -> dict:
        resp = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}},
                             timeout=timeout)
        resp.raise_for_status()
        body = resp.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]


REPOSITORIES = """
query {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes { name location { name } jobs { name isAssetJob } }
    }
    ... on PythonError { message stack }
  }
}
"""

LAUNCH_RUN = """
mutation Launch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

RUN_STATUS = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status tags { key value } }
    ... on PythonError { message }
  }
}
"""

RUN_EVENTS = """
query Events($runId: ID!) {
  logsForRun(runId: $runId, limit: 500) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message level stepKey }
        ... on ExecutionStepFailureEvent { error { message stack } }
        ... on RunFailureEvent { error { message } }
      }
    }
  }
}
"""


def repository_selector(server: DagsterDev) -> tuple[str, str, list[dict]]:
    """(location name, repository name, its jobs) of the one code location."""
    repos = server.graphql(REPOSITORIES)["repositoriesOrError"]
    assert repos["__typename"] == "RepositoryConnection", repos
    (repo,) = repos["nodes"]
    return repo["location"]["name"], repo["name"], repo["jobs"]


def run_event_log(server: DagsterDev, run_id: str) -> str:
    events = server.graphql(RUN_EVENTS, {"runId": run_id})["logsForRun"].get("events", [])
    lines = []
    for e in events:
        text = e.get("message") or ""
        err = (e.get("error") or {})
        if err:
            text += "\n" + (err.get("message") or "") + (err.get("stack") and "".join(err["stack"]) or "")
        lines.append(f"[{e['__typename']}] {text}")
    return "\n".join(lines)


def wait_for_run(server: DagsterDev, run_id: str, timeout: float = 240.0) -> str:
    """Poll until the run ends; return its final status."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        run = server.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]
        status = run.get("status")
        if status in {"SUCCESS", "FAILURE", "CANCELED"}:
            return status
        time.sleep(2.0)
    raise TimeoutError(f"run {run_id} still {status} after {timeout:.0f} s")
