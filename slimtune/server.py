"""`slimtune serve`: one artifact behind HTTP, run as a process (uvicorn), until SIGTERM or Ctrl-C.

In that order: the port is checked and the socket bound before the model loads (a bad port or a
port in use fails at once; a host other than loopback is warned about), then the model loads
(a classifier: service.py's `Service`, POST /predict; a causal LM: openai_service.py's `LMService`,
OpenAI's /v1 API), then uvicorn serves that app on the socket; a stop signal drains the in-flight
requests first.

The module is `server`, not `serve`: a submodule named like the function `slimtune.serve` would
replace that attribute of the package once imported.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Callable

from .compute import physical_cores
from .errors import SlimtuneError
from .service import ServeConfig, Service, load


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a bad or busy port fails at once."""
    # checked here: getaddrinfo takes 70000 as 70000 % 65536 and blames the host for -1
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise SlimtuneError(f"serve: port {port!r} is not in 1-65535 (or 0: any free port)")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise SlimtuneError(f"serve: cannot resolve host {host!r}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise SlimtuneError(f"serve: cannot listen on {_url_host(host)}:{port}: {e.strerror or e}") from None
    return sock


def network_warning(address: str, port: int) -> str | None:
    """The warning for a bound address other than loopback (127.0.0.0/8, ::1); None for loopback."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # not an address: say so rather than stay silent
        ip = None
    ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1 is loopback too
    if ip is not None and ip.is_loopback:
        return None
    return (f"slimtune serve: warning: listening on {_url_host(address)}:{port}: the model is reachable from the network "
            "and the server has no authentication (--host 127.0.0.1 keeps it on this machine)")


def serve(artifact: str | Path, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 32, max_wait_ms: float = 5.0,
          workers: int = 1, max_queue: int = 1024, max_texts: int = 64, max_length: int | None = None, per_row: str = "auto",
          log: Callable[[str], None] = print, max_new_tokens: int = 256) -> None:
    """Serve `artifact` over HTTP until SIGTERM or Ctrl-C; in-flight requests are answered first.
    What is served is its task's `service`: predict (a classifier) or openai (a causal LM)."""
    import uvicorn

    from .tasks import for_model

    cfg = ServeConfig(max_batch, max_wait_ms, workers, max_queue, max_texts, max_length, per_row=per_row,
                      max_new_tokens=max_new_tokens)
    sock = bind(host, port)
    if warning := network_warning(*sock.getsockname()[:2]):
        print(warning, file=sys.stderr, flush=True)  # not `log`: the library's log is stdout, and this is never quiet
    try:
        if for_model(artifact).service == "openai":
            from .openai_service import LMService, load_lm

            loaded = load_lm(artifact)
            service = LMService(loaded, cfg)
            mode = f"OpenAI-compatible: /v1/chat/completions, /v1/completions as model {loaded.name!r}; {loaded.decoder.kind}"
        else:
            threads = max(1, physical_cores() // workers) if workers > 1 else None
            loaded = load(artifact, cfg, threads)
            service = Service(loaded, cfg)
            mode = ", ".join(f"{t or 'model'}: {'one text per call' if v else 'batched'}" for t, v in service.per_row.items())
            mode += f"; max batch {max_batch}, wait {max_wait_ms} ms"
        # keep-alive 30 s (uvicorn: 5): a client that reuses a connection just as the server drops it
        # as idle gets no answer at all; under load a client can be that slow between two requests
        config = uvicorn.Config(service.app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=cfg.drain_seconds, timeout_keep_alive=30)
        where = sock.getsockname()
        server = _Server(config, service, lambda: log(
            f"slimtune serve: ready on http://{_url_host(where[0])}:{where[1]} ({loaded.model_id}, loaded in "
            f"{loaded.load_seconds:.1f} s; {mode})"))
        with _exit_quietly_on_signals():
            server.run(sockets=[sock])
    finally:
        sock.close()
    log("slimtune serve: stopped")


class _Server:
    """uvicorn's Server, marking the service as draining the moment a stop signal arrives."""

    def __new__(cls, config, service, on_ready: Callable[[], None]):
        import uvicorn

        class Server(uvicorn.Server):
            def handle_exit(self, sig, frame):
                service.draining = True
                super().handle_exit(sig, frame)

            async def startup(self, sockets=None):
                await super().startup(sockets)
                if not self.should_exit:
                    on_ready()

        return Server(config)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def _exit_quietly_on_signals():
    """uvicorn re-raises the stop signal once it has shut down gracefully; answer it with a clean exit (0)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
