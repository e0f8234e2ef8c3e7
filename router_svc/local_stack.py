"""``make run``: one expert process per default expert, the router in front, all stopped together.

Each expert runs ``python -m expert_svc`` in its own process group (so a terminal Ctrl-C reaches only
this supervisor, which then stops the router first and the experts after it, in order) and is told
to die with its parent (service_base.lifetime), so even ``kill -9`` of the supervisor leaves no
orphans. The router runs in this process once every expert reports SERVING, with its
OpenAI-compatible HTTP door on ``127.0.0.1:8000`` (``--http-port``; 0 turns it off).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router_svc.config import LOCAL_EXPERT_PORTS, LOCAL_HOST, LOCAL_ROUTER_PORT, RouterConfig, UpstreamExpert
from service_base.lifetime import child_env

LOCAL_HTTP_PORT = 8000

SYSTEM_PROMPTS: dict[str, str] = {
    "code": "You are an expert programmer. Answer with correct, idiomatic code and a short explanation.",
    "math": "You are an expert mathematician. Reason step by step and give the final answer clearly.",
    "science": "You are an expert scientist. Explain the underlying principles accurately and simply.",
    "medicine": "You are an expert physician. Give accurate medical information and advise seeing a doctor "
                "for personal care.",
    "law": "You are an expert lawyer. Explain the legal principles involved; this is not legal advice.",
    "general": "You are a helpful, concise assistant.",
}


@dataclass
class ExpertProcess:
    name: str
    port: int
    log_path: Path
    process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"{LOCAL_HOST}:{self.port}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


#: Seconds an expert gets past its drain (--grace-s, the stack's --grace) to cancel what is left and
#: release its engine before the stack kills it.
KILL_MARGIN_S = 5.0


def _check_port_free(port: int, what: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCAL_HOST, port))
        except OSError as exc:
            raise SystemExit(f"error: port {port} ({what}) is not free: {exc.strerror}. "
                             f"Is another `make run` still running?") from None


def expert_command(expert: ExpertProcess, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "expert_svc", "--engine", args.engine, "--name", expert.name,
               "--listen", expert.address, "--system-prompt", SYSTEM_PROMPTS.get(expert.name, ""),
               "--max-concurrency", str(args.max_concurrency),
               # The expert drains within the stack's grace, so it is done (engine released) before
               # the stack's kill deadline, KILL_MARGIN_S later.
               "--grace-s", str(args.grace)]
    if args.engine == "llamacpp":
        # Six model processes share the machine's cores: one compute thread each.
        command += ["--threads", str(args.threads)]
    return command


async def _spawn(expert: ExpertProcess, args: argparse.Namespace) -> None:
    log_fd = os.open(expert.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        expert.process = await asyncio.create_subprocess_exec(
            *expert_command(expert, args), stdin=asyncio.subprocess.DEVNULL, stdout=log_fd,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True, env=child_env(),
        )
    finally:
        os.close(log_fd)


async def _wait_serving(expert: ExpertProcess, timeout: float) -> None:
    """Polls the expert's health until SERVING; fails early if its process exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with grpc.aio.insecure_channel(expert.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            assert expert.process is not None
            if expert.process.returncode is not None:
                raise RuntimeError(f"expert {expert.name!r} exited with status {expert.process.returncode}; "
                                   f"last lines of {expert.log_path}:\n{expert.log_tail()}")
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if loop.time() > deadline:
                raise RuntimeError(f"expert {expert.name!r} was not SERVING after {timeout:.0f} s; "
                                   f"see {expert.log_path}")
            await asyncio.sleep(0.2)


async def _stop_experts(experts: Sequence[ExpertProcess], grace: float) -> None:
    """SIGTERM every expert's process group, then SIGKILL what is left after ``grace`` seconds."""
    running = [e for e in experts if e.process is not None and e.process.returncode is None]
    for expert in running:
        try:
            os.killpg(expert.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    waits = [asyncio.create_task(e.process.wait()) for e in running]
    if not waits:
        return
    _, pending = await asyncio.wait(waits, timeout=grace)
    if pending:
        for expert in running:
            if expert.process.returncode is None:
                print(f"expert {expert.name!r} did not stop in {grace:.0f} s: killing it", file=sys.stderr)
                try:
                    os.killpg(expert.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        await asyncio.wait(pending)


def _usage(router_address: str, experts: Sequence[ExpertProcess], log_dir: Path,
           http_address: str | None = None) -> str:
    bin_dir = Path(sys.executable).parent
    cli = bin_dir / "expert-router"
    cli_text = os.path.relpath(cli) if cli.exists() else "expert-router"
    if not cli_text.startswith(("/", ".")):
        cli_text = "./" + cli_text
    target = "" if router_address == f"{LOCAL_HOST}:{LOCAL_ROUTER_PORT}" else f" --target {router_address}"
    lines = [
        "",
        f"Expert Router is up on {router_address}",
        "  experts: " + ", ".join(f"{e.name}={e.port}" for e in experts),
        f"  logs:    {log_dir}",
        "",
        "Try:",
        f"  {cli_text} generate{target} \"Write a Python function that checks whether a number is prime.\"",
        f"  {cli_text} generate{target} --expert law \"What makes a contract valid?\"",
        f"  {cli_text} experts{target}",
        *_http_usage(http_address),
        "  grpcurl -plaintext -d " + shlex.quote('{"prompt": "What is the derivative of x^3?"}')
        + f" {router_address} expert_router.v1.Router/Generate",
        "  grpcurl -plaintext -d " + shlex.quote('{"prompt": "Symptoms of anemia?"}')
        + f" {router_address} expert_router.v1.Router/Classify",
        f"  grpcurl -plaintext {router_address} expert_router.v1.Router/ListExperts",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def _http_usage(http_address: str | None) -> list[str]:
    if not http_address:
        return []
    body = '{"model": "auto", "messages": [{"role": "user", "content": "What is the derivative of x^3?"}]}'
    chat = (f"  curl -s http://{http_address}/v1/chat/completions -H 'Content-Type: application/json' "
            f"-d {shlex.quote(body)}")
    return [chat, f"  curl -s http://{http_address}/v1/models"]


async def run_stack(args: argparse.Namespace) -> int:
    from router_svc import server

    expert_ports = dict(LOCAL_EXPERT_PORTS)
    if args.expert_ports:
        ports = [int(p) for p in args.expert_ports.split(",")]
        if len(ports) != len(expert_ports):
            raise SystemExit(f"error: --expert-ports needs {len(expert_ports)} ports "
                             f"({', '.join(expert_ports)})")
        expert_ports = dict(zip(expert_ports, ports))
    _check_port_free(args.router_port, "router")
    if args.http_port:
        _check_port_free(args.http_port, "router (HTTP)")
    for name, port in expert_ports.items():
        _check_port_free(port, f"expert {name}")

    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="expert-router-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    experts = [ExpertProcess(name, port, log_dir / f"{name}.log") for name, port in expert_ports.items()]

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            print("\nstopping (Ctrl-C again to kill at once)...", file=sys.stderr, flush=True)
            stop.set()
        else:
            for e in experts:
                if e.process is not None and e.process.returncode is None:
                    try:
                        os.killpg(e.process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            os._exit(130)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)

    router = None
    status = 0
    try:
        print(f"starting {len(experts)} {args.engine} experts (logs in {log_dir})...",
              file=sys.stderr, flush=True)
        for expert in experts:
            await _spawn(expert, args)
        probes = [asyncio.create_task(_wait_serving(e, args.startup_timeout)) for e in experts]
        stop_wait = asyncio.create_task(stop.wait())
        pending = set(probes)
        while pending and not stop.is_set():
            done, pending = await asyncio.wait(pending | {stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(stop_wait)
            failed = [task for task in done if task is not stop_wait and task.exception() is not None]
            if failed:
                for task in pending:
                    task.cancel()
                raise failed[0].exception()
        if stop.is_set():
            for task in probes:
                task.cancel()
            return 0

        cfg = RouterConfig(
            experts=tuple(UpstreamExpert(e.name, (e.address,)) for e in experts),
            listen=f"{LOCAL_HOST}:{args.router_port}", classifier_dir=args.classifier,
            cascade_dir=args.cascade_model,
            http_listen=f"{LOCAL_HOST}:{args.http_port}" if args.http_port else None,
        )
        router = await server.start(cfg)
        http_address = router.http.address if router.http is not None else None
        print(_usage(router.address, experts, log_dir, http_address), flush=True)

        exits = {asyncio.create_task(e.process.wait()): e for e in experts}
        while not stop.is_set():
            done, _ = await asyncio.wait({stop_wait, *exits}, return_when=asyncio.FIRST_COMPLETED)
            for task in done & set(exits):
                expert = exits.pop(task)
                print(f"warning: expert {expert.name!r} exited with status {task.result()}; the router "
                      f"reports it unhealthy. Last lines of {expert.log_path}:\n{expert.log_tail()}",
                      file=sys.stderr, flush=True)
        for task in exits:
            task.cancel()
    except RuntimeError as exc:  # an expert failed to start
        print(f"error: {exc}", file=sys.stderr)
        status = 1
    except (ValueError, OSError) as exc:  # the router failed to start (classifier missing, port taken...)
        print(f"error: cannot start the router: {exc}", file=sys.stderr)
        status = 1
    finally:
        if router is not None:
            await router.stop(args.grace)
        await _stop_experts(experts, args.grace + KILL_MARGIN_S)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    print("stopped.", file=sys.stderr)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m router_svc.local_stack",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("llamacpp", "synthetic"), default="llamacpp",
                        help="llamacpp: the real CPU model (default); synthetic: no model, starts in seconds")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads per expert (default 1)")
    parser.add_argument("--max-concurrency", type=int, default=4, help="streams per expert (default 4)")
    parser.add_argument("--classifier", metavar="DIR", help="classifier artifact (default: packaged)")
    parser.add_argument("--cascade-model", metavar="DIR",
                        help="the router's optional cascade model (docs/configuration.md; default: off)")
    parser.add_argument("--router-port", type=int, default=LOCAL_ROUTER_PORT)
    parser.add_argument("--http-port", type=int, default=LOCAL_HTTP_PORT,
                        help=f"the router's OpenAI-compatible HTTP port (default {LOCAL_HTTP_PORT}; 0: off)")
    parser.add_argument("--expert-ports", metavar="P1,...,P6",
                        help=f"ports for {', '.join(LOCAL_EXPERT_PORTS)} "
                             f"(default {','.join(map(str, LOCAL_EXPERT_PORTS.values()))})")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for experts")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds streams get to finish at Ctrl-C")
    parser.add_argument("--log-dir", help="where expert logs go (default: a new temporary folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from router_svc import logging_setup

    args = build_parser().parse_args(argv)
    logging_setup.configure("INFO", "text")
    return asyncio.run(run_stack(args))


if __name__ == "__main__":
    sys.exit(main())
