"""Running the app with uvicorn: in the foreground (the commands) or on a background thread (tests, notebooks).

    run_server(model, ServeSettings(port=8000), web=True)          # blocks until Ctrl-C
    with BackgroundServer(model, ServeSettings(port=0)) as srv:    # port 0: a free port, on 127.0.0.1
        OpenAI(base_url=srv.url + "/v1", api_key="-").chat.completions.create(...)
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Optional

from .adapter import ServedModel
from .app import create_app
from .settings import ServeSettings

log = logging.getLogger("mllm.app.serve")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(model: ServedModel, settings: ServeSettings, web: bool = False, log_level: str = "info") -> None:
    import uvicorn

    if not is_loopback(settings.host) and settings.api_key is None:
        log.warning("listening on %s without --api-key: anyone who can reach this address can use the model",
                    settings.host)
    app = create_app(model, settings, web=web)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, timeout_graceful_shutdown=5)


class BackgroundServer:
    """uvicorn on a daemon thread; ``url`` once started. ``port=0`` takes a free port."""

    def __init__(self, model: ServedModel, settings: Optional[ServeSettings] = None, web: bool = False,
                 log_level: str = "warning"):
        import uvicorn

        self.settings = settings or ServeSettings(port=0)
        self.app = create_app(model, self.settings, web=web)
        config = uvicorn.Config(self.app, host=self.settings.host, port=self.settings.port, log_level=log_level,
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="mllm-serve-uvicorn", daemon=True)
        self.url = ""

    @property
    def scheduler(self):
        return self.app.state.scheduler

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise RuntimeError(f"the server did not start on {self.settings.host}:{self.settings.port}")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.settings.host}:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
