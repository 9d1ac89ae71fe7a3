"""``jobs/*.py`` submitted to a running cluster through the job API, as on a real cluster.

A separate head (``ray start --head --block``) on loopback, with its own ports and temp dir, because
the job server needs the dashboard and its agent's HTTP port: a ``ray.init`` cluster always takes
agent port 52365, which another Ray on the same machine may already hold. Stopping it terminates
only the ``ray start`` process this module started (its Ray processes share its fate), never
``ray stop``, which would kill every Ray of this user, the test session's included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from der_ray import cli
from der_ray.jobs_submit import submit_job

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def job_server() -> Iterator[str]:
    """The job API URL of a private 2-CPU head on 127.0.0.1 (auth disabled, no usage stats)."""
    from ray.job_submission import JobSubmissionClient

    temp = tempfile.mkdtemp(prefix="derjob", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    log = open(Path(temp) / "ray_start.log", "w")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={_free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={port}",
         f"--dashboard-agent-listen-port={_free_port()}", "--num-cpus=2", f"--temp-dir={temp}",
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # ready when the job API answers and an agent has registered
            assert proc.poll() is None, (Path(temp) / "ray_start.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the test head did not come up in 120 s"
            try:
                client = JobSubmissionClient(url)
                client.list_jobs()
                break
            except (ConnectionError, RuntimeError):
                time.sleep(1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the process started above
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _submit(url: str, argv: list[str], logs: list[str]) -> str:
    """Submit ``python <argv>`` with the repository as working dir and wait for the end."""
    _, status = submit_job([sys.executable, *argv], address=url, working_dir=REPO, poll_s=0.5, timeout_s=300,
                           log=logs.append)
    return status


def test_build_cache_job_succeeds_and_writes_absolute_outputs(job_server, pool_yaml, tmp_path):
    out = tmp_path / "job"
    logs: list[str] = []
    status = _submit(job_server, ["jobs/build_cache.py", "--config", pool_yaml, "--domains", "triviaqa",
                                  "--per-domain", "2", "--depth", "0", "--cache-dir", str(out / "responses"),
                                  "--report", str(out / "report.json"), "--domain-size", "--no-progress"],
                     logs)
    assert status == "SUCCEEDED", "".join(logs)[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["asked_per_step"][0] == report["puts"] == report["records"] == 2 * 2  # questions x experts
    assert report["cache_dir"] == str(out / "responses") and list((out / "responses").glob("seg-*.parquet"))
    assert "unique LLM calls 4" in "".join(logs)


def test_prepare_models_job_on_every_node(job_server, pool_yaml, tmp_path):
    logs: list[str] = []
    status = _submit(job_server, ["jobs/prepare_models.py", "--config", pool_yaml, "--every-node",
                                  "--report", str(tmp_path / "prepared.json")], logs)
    assert status == "SUCCEEDED", "".join(logs)[-3000:]
    (node,) = json.loads((tmp_path / "prepared.json").read_text()).values()  # one node here
    assert set(node) == {"tiny-chat", "tiny-base"}
    assert all(Path(d, "config.json").is_file() for d in node.values())


def test_failing_job_reports_failed(job_server, tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    code = cli.main(["submit", "--address", job_server, "--working-dir", str(REPO), "--",
                     sys.executable, "jobs/prepare_models.py", "--config", str(missing)])
    captured = capsys.readouterr()
    assert code == 1 and ": FAILED" in captured.err
    assert f"error: config file not found: {missing}" in captured.out  # the job's own stderr, via its log
