"""``dca serve``: the assistant over an OpenAI-compatible local HTTP API, with a chat page.

:func:`create_app` builds the FastAPI application around an :class:`~dca.assistant.Assistant`; :func:`serve`
runs it with uvicorn. Python apps can use the in-process ``Assistant`` instead; apps in any other language
(Electron, Tauri, Qt...) talk to this server as they would to llama-server or Ollama.
"""

from __future__ import annotations

import ipaddress
import socket

from ..errors import ConfigError
from .app import create_app

__all__ = ["create_app", "is_loopback", "serve"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) binds the loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or --host") \
                from None


def serve(app, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          log_level: str = "warning", on_start=None) -> None:
    """Run ``app`` with uvicorn until interrupted.

    Args:
        host, port: where to listen; a host other than loopback needs ``api_key`` (the app must have been created
            with it).
        on_start: called once the socket listens (to print the address).

    Raises:
        ConfigError: a non-loopback ``host`` without ``api_key``; the port is taken.
    """
    import uvicorn

    if not is_loopback(host) and not api_key:
        raise ConfigError(f"--host {host} listens beyond this machine: give an API key with --api-key-env NAME "
                          "(the name of an environment variable holding it), or bind 127.0.0.1")
    _check_port(host, port)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    if on_start is not None:
        original = server.startup

        async def startup(sockets=None):
            await original(sockets)
            if server.started:
                on_start()

        server.startup = startup
    try:
        server.run()
    finally:
        app.state.engine.close()


class ServerThread:
    """Run ``app`` with uvicorn on a thread of this process, for as long as the ``with`` block lasts (a Python app that
    also serves other programs; tests; benchmarks). ``port=0`` takes a free port; ``url`` is the base address.

    Raises:
        RuntimeError: the server did not start within ``timeout`` seconds.
    """

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=1))
        self.timeout = timeout
        self.url = ""
        self._thread = None

    def __enter__(self) -> ServerThread:
        import threading
        import time

        self._thread = threading.Thread(target=self.server.run, name="dca-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self.app.state.engine.close()
