"""What more API processes buy: 1, 2 and 4 processes against one PostgreSQL, under wrk.

For each process count N, three servers run in turn on one port each: a bare FastAPI app
answering a constant (N uvicorn processes on one shared socket), and
`linkvault api --workers N` serving get-by-id and list-by-user for API-key connections
seeded in a throwaway database. wrk (Debian's package) is the load generator, on the same
machine, over keep-alive HTTP/1.1. It prints requests per second and p50/p99 next to the
bare endpoint with the same process count. The refresh workers' side is
bench/bench_refresh.py (1, 2 and 4 worker processes).

    .venv/bin/python bench/bench_fleet.py [--processes 1,2,4] [--seconds 5]
                                          [--connections 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from bench_api import bare_app, seeded_api

HERE = Path(__file__).resolve().parent
app = bare_app()  # what `uvicorn bench_fleet:app --workers N` serves


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def server(command: list[str], env: dict[str, str], port: int, probe: str) -> Iterator[str]:
    process = subprocess.Popen(
        command, env=env, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{command[:4]} exited: {process.stderr and process.stderr.read()}"
                )
            try:
                if httpx.get(url + probe, timeout=1).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[:4]} did not come up")
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def bare_servers(count: int, env: dict[str, str]) -> Iterator[str]:
    """`count` uvicorn processes serving the bare app on one socket bound here, as
    `linkvault api --workers N` shares its socket. (uvicorn's own --workers and --fd modes
    treat the socket as a Unix one, so asyncio leaves Nagle on: every answer then waits
    ~40 ms for a delayed ACK, which is no baseline.)"""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    command = [sys.executable, __file__, "--serve-bare-fd", str(sock.fileno())]
    processes = [
        subprocess.Popen(command, env=env, cwd=HERE, pass_fds=[sock.fileno()]) for _ in range(count)
    ]
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/constant", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the bare servers did not come up")
            time.sleep(0.1)
        time.sleep(1.0)  # let every process reach its accept loop
        yield url
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        sock.close()


@dataclass
class Result:
    processes: int
    scenario: str
    rps: float
    p50: float
    p99: float
    errors: int


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(
    url: str, paths: Sequence[str], key: str, args: argparse.Namespace, work: Path
) -> tuple[float, float, float, int]:
    script = work / "paths.lua"
    quoted = ",\n".join(f'  "{p}"' for p in paths)
    script.write_text(
        f"local paths = {{\n{quoted}\n}}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i + 1\n"
        f'  local auth = {{["Authorization"] = "Bearer {key}"}}\n'
        '  return wrk.format("GET", paths[(i % #paths) + 1], auth)\n'
        "end\n"
    )
    done = subprocess.run(
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    sock_errors = re.search(r"Socket errors: (.*)", out)
    if sock_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", sock_errors.group(1)))
    return rps, p50, p99, errors


async def run(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    async with seeded_api("linkvault_bench_fleet", args.users, args.per_user) as seeded:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            key = seeded.key
            env = {
                **seeded.env,
                "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
                "LINKVAULT_PROVIDERS_FILE": str(seeded.providers),
                "LINKVAULT_LOG_LEVEL": "WARNING",
            }
            linkvault = str(Path(sys.executable).parent / "linkvault")
            by_id = [f"/v1/connections/{c}" for c in seeded.connections]
            by_user = [f"/v1/connections?user_id={u}&limit=50" for u in seeded.users]
            for n in args.processes:
                with bare_servers(n, env) as url:
                    results.append(
                        Result(n, "bare constant", *wrk(url, ["/constant"], key, args, work))
                    )
                port = free_port()
                api = [linkvault, "api", "--workers", str(n), "--port", str(port)]
                with server(api, env, port, "/v1/health/live") as url:
                    results.append(Result(n, "get by id", *wrk(url, by_id, key, args, work)))
                    results.append(Result(n, "list by user", *wrk(url, by_user, key, args, work)))
    return results


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"wrk -t{args.threads} -c{args.connections}, {args.seconds} s a run, on this machine "
        f"({os.cpu_count()} cores) with the servers and PostgreSQL; "
        f"{args.users} users x {args.per_user} connections"
    )
    print(f"{'processes':>9}  {'scenario':<14}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'errors':>8}{'vs bare':>9}{'p99 vs bare':>13}")  # fmt: skip
    bare = {r.processes: r for r in results if r.scenario == "bare constant"}
    for r in results:
        base = bare[r.processes]
        print(f"{r.processes:>9}  {r.scenario:<14}{r.rps:>9.0f}{r.p50:>9.2f}{r.p99:>9.2f}"
              f"{r.errors:>8}{r.rps / base.rps:>8.2f}x{r.p99 / base.p99:>12.2f}x")  # fmt: skip


def serve_bare(fd: int) -> None:
    """A child of bare_servers: the bare app on the inherited TCP socket."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, fileno=fd)
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-bare-fd":
        serve_bare(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--per-user", type=int, default=5)
    args = parser.parse_args()
    args.processes = [int(p) for p in args.processes.split(",")]
    if shutil.which("wrk") is None:
        print("bench_fleet needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    report(asyncio.run(run(args)), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
