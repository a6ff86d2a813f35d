"""A private PostgreSQL cluster, started by the tests, that they may stop and restart at will.

The shared server other tests use is never touched. initdb and pg_ctl refuse to run as root,
so as root they run as the `postgres` OS user.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from linkvault.stores.postgres import PostgresConnectionRepository

OS_USER = "postgres"


def _bin_dir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PrivateCluster:
    bin_dir: Path
    root: Path
    port: int
    as_root: bool
    databases: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", OS_USER, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def is_running(self) -> bool:
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"]
        if self.as_root:
            command = ["runuser", "-u", OS_USER, "--", *command]
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0

    def restart(self) -> None:
        """Stop and start again, blocking: the caller's event loop sees nothing meanwhile."""
        self.stop()
        self.start()

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def create_database(self, *, migrated: bool = True) -> str:
        name = f"lv_private_{secrets.token_hex(6)}"
        admin = await asyncpg.connect(self.url, timeout=5)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        self.databases.append(name)
        url = self.database_url(name)
        if migrated:
            repo = await PostgresConnectionRepository.connect(url, min_size=1, max_size=1)
            async with repo:
                await repo.migrate()
        return url

    def destroy(self) -> None:
        if self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start_private_cluster() -> PrivateCluster:
    """Create, start and return a throwaway cluster; raises RuntimeError when it cannot."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    as_root = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="linkvault-pg-"))
    if as_root:
        owner = pwd.getpwnam(OS_USER)
        os.chown(root, owner.pw_uid, owner.pw_gid)
    cluster = PrivateCluster(bin_dir, root, _free_port(), as_root)
    try:
        cluster.init()
        cluster.start()
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        stderr = getattr(exc, "stderr", b"") or b""
        raise RuntimeError(f"{exc} {stderr.decode(errors='replace').strip()}") from exc
    return cluster


# Fixtures under a name of their own, so a test module imports them without shadowing.
@pytest.fixture(scope="session", name="private_postgres")
def private_postgres_fixture() -> Iterator[PrivateCluster]:
    try:
        cluster = start_private_cluster()
    except RuntimeError as exc:
        reason = f"cannot start a private PostgreSQL cluster: {exc}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(name="running_private_postgres")
def running_private_postgres_fixture(private_postgres: PrivateCluster) -> Iterator[PrivateCluster]:
    """The private cluster, running before the test and again after it, whatever the test did."""
    if not private_postgres.is_running():
        private_postgres.start()
    yield private_postgres
    if not private_postgres.is_running():
        private_postgres.start()
