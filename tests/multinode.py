"""Jobs of several processes on 127.0.0.1, started as separate hosts would start them (multi-node tests).

The launch commands here are the ones docs/scaling.md shows (a test checks it), with the loopback
address and a port picked per run. Every process writes its own log; when one fails the others
are stopped at once (they would wait for it at the next rendezvous or collective), and a job
still running at its deadline is stopped whole, so a hang fails its test in bounded time instead
of blocking CI.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
HOST = "127.0.0.1"  # every address of these jobs is the loopback one: nothing leaves the machine
# one compute thread per process: the job's processes share the CI machine's cores, and OpenMP
# or Eigen pools sized to all cores in every process oversubscribe them
THREADS = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
}
# gloo and the c10d store on the loopback interface only, whatever the machine's host name resolves to
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": HOST}
# what a process prints when a port picked for it was taken between the pick and its bind
ADDRESS_IN_USE = ("address already in use", "eaddrinuse", "errno 98", "failed to bind", "address in use")
LAUNCH_ATTEMPTS = 3
LOG_CHARS = 200_000  # per process, printed on failure: every rank's log whole (they are a few KiB)


def free_port() -> int:
    """A port nothing listens on now (the kernel's choice for port 0).

    Only where the other processes must know the port before the first one starts (the rendezvous
    endpoint, the JAX coordinator, the TF workers); if another program takes it meanwhile, the
    process that binds it fails at once with "address already in use". A job of one node lets
    its store bind port 0 itself (``torchrun --standalone``).
    """
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    """The environment of one job process: the project importable, few threads, loopback only."""
    out = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONFAULTHANDLER": "1",  # a fatal signal (SIGABRT from a C++ thread) dumps every thread's stack to the log
        **THREADS,
        **LOOPBACK,
        **extra,
    }
    for name in (
        "XLA_FLAGS",
        "TF_CONFIG",
        "MASTER_PORT",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "JAX_COORDINATOR_ADDRESS",
        "JAX_NUM_PROCESSES",
        "JAX_PROCESS_ID",
    ):
        if name not in extra:
            out.pop(name, None)  # a variable left by the caller's environment would change the job
    return out


def torchrun(node: int, port: int, script: list[str], *, nnodes: int = 2) -> list[str]:
    """The ``torchrun`` arguments of one node: c10d rendezvous on ``HOST:port``, hosted by node 0.

    With the c10d rendezvous the global ranks are assigned when the nodes meet (``--node-rank``
    belongs to the static rendezvous); ``is_host`` says which node runs the rendezvous store
    (on separate hosts torchrun also infers it from the endpoint's host name).
    """
    return [
        "--nnodes",
        str(nnodes),
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"{HOST}:{port}",
        "--rdzv-id",
        "encdec",
        "--rdzv-conf",
        f"is_host={int(node == 0)}",
        "--local-addr",
        HOST,
        *script,
    ]


def jax_env(port: int, processes: int, process_id: int) -> dict[str, str]:
    """The variables of one process of a JAX job whose coordinator (process 0) listens on ``HOST:port``.

    JAX reads ``JAX_COORDINATOR_ADDRESS`` itself; the script passes the other two to
    ``jax.distributed.initialize``.
    """
    return {
        "JAX_COORDINATOR_ADDRESS": f"{HOST}:{port}",
        "JAX_NUM_PROCESSES": str(processes),
        "JAX_PROCESS_ID": str(process_id),
    }


def shell(variables: dict[str, str], cmd: list[str]) -> str:
    """``cmd`` as a shell line with ``variables`` set in front (how the docs show a launch)."""
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in variables.items()), shlex.join(cmd)])


def tf_config(ports: list[int], index: int) -> str:
    """``TF_CONFIG`` of worker ``index`` in a cluster of workers on ``HOST:ports[i]``."""
    return json.dumps(
        {"cluster": {"worker": [f"{HOST}:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )


def run_on_ports(
    launch: Callable[[list[int]], tuple[list[list[str]], list[dict[str, str]]]],
    ports: int,
    logs: Path,
    *,
    timeout: float,
) -> float:
    """``run_together`` of ``launch(ports)``, on fresh ports again if a port picked was taken before its bind.

    A port known to every process before the first starts can be taken by another program in
    between (:func:`free_port`); the process that binds it then fails at once saying so. Only
    that failure is retried, at most ``LAUNCH_ATTEMPTS`` times, each in its own log folder.
    """
    for attempt in range(1, LAUNCH_ATTEMPTS + 1):
        cmds, envs = launch([free_port() for _ in range(ports)])
        folder = logs if attempt == 1 else logs.with_name(f"{logs.name}-retry{attempt}")
        try:
            return run_together(cmds, envs, folder, timeout=timeout)
        except AssertionError as e:
            text = "\n".join(p.read_text(errors="replace") for p in folder.glob("process*.log")).lower()
            if attempt == LAUNCH_ATTEMPTS or not any(k in text for k in ADDRESS_IN_USE):
                raise
            print(f"attempt {attempt}: a picked port was taken ({str(e).splitlines()[0]}); launching again")
    raise AssertionError("unreachable")


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"{code} ({signal.Signals(-code).name})"
    return str(code)


def run_together(cmds: list[list[str]], envs: list[dict[str, str]], logs: Path, *, timeout: float) -> float:
    """Start ``cmds`` at once, wait for all; raise with every log if one fails or the deadline passes.

    Returns the wall time. Each process leads its own session, so stopping it stops what it started
    (torchrun's workers).
    """
    logs.mkdir(parents=True, exist_ok=True)
    files = [open(logs / f"process{i}.log", "w") for i in range(len(cmds))]  # noqa: SIM115  (closed below)
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(c, env=e, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        for c, e, f in zip(cmds, envs, files)
    ]
    failed = ""
    try:
        while any(p.poll() is None for p in procs):
            bad = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if bad:
                failed = f"process {bad[0]} exited with {_exit(procs[bad[0]].returncode)}"
                break
            if time.monotonic() - t0 > timeout:
                failed = f"still running after {timeout:.0f} s"
                break
            time.sleep(0.2)
        else:
            bad = [i for i, p in enumerate(procs) if p.returncode != 0]
            failed = f"process {bad[0]} exited with {_exit(procs[bad[0]].returncode)}" if bad else ""
    finally:
        _stop([p for p in procs if p.poll() is None])
        for f in files:
            f.close()
    if failed:
        codes = ", ".join(f"process {i}: {_exit(p.returncode)}" for i, p in enumerate(procs))
        tails = f"exit codes after stopping: {codes}\n" + "\n".join(
            f"--- process {i}: {shlex.join(c)}\n{(logs / f'process{i}.log').read_text(errors='replace')[-LOG_CHARS:]}"
            for i, c in enumerate(cmds)
        )
        raise AssertionError(f"{failed}\n{tails}")
    return time.monotonic() - t0


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM first (torchrun then stops its workers, which lead sessions of their own), SIGKILL after 10 s."""
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
