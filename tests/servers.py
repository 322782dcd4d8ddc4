"""Real servers on localhost for the deployment tests and the load benchmark: PostgreSQL (Debian's
package), Redis, dagster-celery workers and the Dagster daemon. Each is started in a temporary
folder and stopped (and its folder removed) when its block ends."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def missing_servers() -> list[str]:
    need = {"initdb": _pg_bin("initdb"), "pg_ctl": _pg_bin("pg_ctl"), "redis-server": shutil.which("redis-server")}
    if os.geteuid() == 0:  # PostgreSQL runs as the `postgres` user that Debian's package creates
        need["runuser"] = shutil.which("runuser") or shutil.which("/usr/sbin/runuser")
        need["the postgres user"] = _has_user("postgres")
    return [name for name, path in need.items() if not path]


def _has_user(name: str) -> bool:
    import pwd

    try:
        return bool(pwd.getpwnam(name))
    except KeyError:
        return False


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((str(v / name) for v in versions if (v / name).exists()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, every: float = 1.0):
    """Poll `predicate` every `every` s until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, its commands run as the `postgres` user."""
    return [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@contextmanager
def postgres_server(timeout: float = 120):
    """Yield the DAGSTER_PG_* environment of a fresh PostgreSQL cluster on a free port."""
    folder = Path(tempfile.mkdtemp(prefix="curation-pg-"))
    data, sockets = folder / "data", folder / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()
    pwfile = folder / "pw"
    password = "curation-test"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres")
    run = lambda *cmd: subprocess.run([*_as_postgres_user(), *cmd], check=True, capture_output=True, text=True, timeout=timeout)  # noqa: E731
    try:
        run(_pg_bin("initdb"), "-D", str(data), "-U", "dagster", "--pwfile", str(pwfile), "-A", "md5", "-E", "UTF8")
        run(
            _pg_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-t", str(int(timeout)),
            "-o", f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
            "start",
        )
        env = {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port), "DAGSTER_PG_USER": "dagster", "DAGSTER_PG_PASSWORD": password, "DAGSTER_PG_DB": "postgres"}
        yield env
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*_as_postgres_user(), _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def redis_server(timeout: float = 60):
    """Yield the URL of a Redis on a free port, keeping nothing on disk."""
    folder = Path(tempfile.mkdtemp(prefix="curation-redis-"))
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout, proc)
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


def stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


def base_env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env["DAGSTER_DISABLE_TELEMETRY"] = "yes"
    # A loaded machine answers code-server calls slowly: wait, rather than fail a dequeue or a tick.
    env.setdefault("DAGSTER_GRPC_TIMEOUT_SECONDS", "300")
    env.setdefault("DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS", "300")
    return env


@contextmanager
def celery_workers(names: list[str], env: dict[str, str], logs: Path):
    """dagster-celery workers (one task at a time each), started by deploy/cluster.sh as on a cluster."""
    procs = []
    try:
        for name in names:
            log = open(logs / f"worker-{name}.log", "wb")
            procs.append(
                subprocess.Popen(
                    ["bash", str(ROOT / "deploy" / "cluster.sh"), "worker", name],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            )
        yield procs
    finally:
        for proc in procs:
            stop(proc)


@contextmanager
def dagster_daemon(env: dict[str, str], logs: Path, cwd: Path = ROOT):
    proc = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
        cwd=cwd, env=env, stdout=open(logs / "daemon.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop(proc, grace=60)


@contextmanager
def dagster_webserver(env: dict[str, str], logs: Path, cwd: Path = ROOT):
    """`dagster-webserver -w workspace.yaml` on a free port; yields the port."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=cwd, env=env, stdout=open(logs / "webserver.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield port
    finally:
        stop(proc, grace=30)
