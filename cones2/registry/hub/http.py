"""Network limits for every Hub call: connect/read timeouts and a bounded, quiet retry count.

huggingface_hub 2.4 shares one ``httpx2.Client`` created with ``timeout=None`` (a server
that accepts and never answers blocks for ever) and retries 5xx answers and network
errors up to five times, logging a "Retrying in Ns" warning each time. cones2 installs
its own client factory (:func:`huggingface_hub.set_client_factory`) whose client has
finite timeouts and whose transport counts the attempts of the current operation: the
last allowed failure ends the operation at once with :class:`RetriesExhausted`, which
:func:`~cones2.registry.hub.client.translate` turns into one line saying what failed
and how often it was tried. huggingface_hub's own retry warnings are filtered out.

Settings (environment first, then ``config.toml``, then the default):

=============================  ======================  =======
``CONES2_HUB_CONNECT_TIMEOUT``  ``hub_connect_timeout``  10 s
``CONES2_HUB_READ_TIMEOUT``     ``hub_read_timeout``     30 s
``CONES2_HUB_TRIES``            ``hub_tries``            3
=============================  ======================  =======
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from ...errors import UsageError

DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_TRIES = 3
_SETTINGS = {
    "connect_timeout": ("CONES2_HUB_CONNECT_TIMEOUT", "hub_connect_timeout", DEFAULT_CONNECT_TIMEOUT_S),
    "read_timeout": ("CONES2_HUB_READ_TIMEOUT", "hub_read_timeout", DEFAULT_READ_TIMEOUT_S),
    "tries": ("CONES2_HUB_TRIES", "hub_tries", DEFAULT_TRIES),
}
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_QUIET_MARKERS = ("Retrying in", "thrown while requesting", "Rate limited", "HTTP Error")


@dataclass(frozen=True)
class NetworkSettings:
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout: float = DEFAULT_READ_TIMEOUT_S
    tries: int = DEFAULT_TRIES


def network_settings() -> NetworkSettings:
    """The limits in force now (environment over config file over defaults)."""
    from ... import config

    data = config._read_file(config.home() / config.CONFIG_FILE)
    values: dict[str, Any] = {}
    for field_name, (env, key, default) in _SETTINGS.items():
        raw = os.environ.get(env)
        origin = env
        if raw in (None, ""):
            raw, origin = data.get(key), f"{key} in {config.CONFIG_FILE}"
        if raw in (None, ""):
            values[field_name] = default
            continue
        try:
            value = int(raw) if field_name == "tries" else float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UsageError(f"{origin} must be a number, not {raw!r}") from None
        if not (0 < value <= (100 if field_name == "tries" else 3600)):
            raise UsageError(f"{origin} must be positive and at most {100 if field_name == 'tries' else 3600}, not {raw!r}")
        values[field_name] = value
    return NetworkSettings(**values)


class RetriesExhausted(Exception):
    """Raised by the transport on the last allowed failure of one operation."""

    def __init__(self, tries: int, last: str) -> None:
        super().__init__(f"tried {tries} time{'s' if tries != 1 else ''}, last: {last}")
        self.tries = tries
        self.last = last


class _Attempts:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failures = 0


_current: contextvars.ContextVar[_Attempts | None] = contextvars.ContextVar("cones2_hub_attempts", default=None)


def begin_operation() -> contextvars.Token[_Attempts | None]:
    """Start counting failed attempts for one operation (see ``translate``)."""
    return _current.set(_Attempts(network_settings().tries))


def tries_so_far() -> int:
    """Failed attempts of the current operation (at least 1 once it failed)."""
    attempts = _current.get()
    return max(1, attempts.failures) if attempts is not None else 1


def end_operation(token: contextvars.Token[_Attempts | None]) -> None:
    _current.reset(token)


def _make_transport(settings: NetworkSettings) -> Any:
    import httpx2

    limits = {
        "connect": settings.connect_timeout, "read": settings.read_timeout,
        "write": settings.read_timeout, "pool": settings.connect_timeout,
    }

    class CountingTransport(httpx2.HTTPTransport):
        """Ends an operation on its last allowed failure instead of letting the client back off again."""

        def handle_request(self, request: Any) -> Any:
            # huggingface_hub passes timeout=None on some calls (list_models' pagination),
            # which overrides the client's default: fill in every missing limit here.
            given = request.extensions.get("timeout") or {}
            request.extensions["timeout"] = {k: given.get(k) if given.get(k) is not None else v for k, v in limits.items()}
            attempts = _current.get()
            try:
                response = super().handle_request(request)
            except (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError) as exc:
                if attempts is None:
                    raise
                attempts.failures += 1
                if attempts.failures >= attempts.limit:
                    kind = "no answer within the timeout" if isinstance(exc, httpx2.TimeoutException) else type(exc).__name__
                    text = str(exc).splitlines()[0] if str(exc) else ""
                    raise RetriesExhausted(attempts.failures, f"{kind} {text}".strip()) from None
                raise
            if attempts is not None and response.status_code in _RETRY_STATUS:
                attempts.failures += 1
                if attempts.failures >= attempts.limit:
                    response.close()
                    raise RetriesExhausted(attempts.failures, f"HTTP {response.status_code}")
            return response

    return CountingTransport()


def _client_factory() -> Any:
    import httpx2
    from huggingface_hub.utils._http import hf_request_event_hook

    settings = network_settings()
    timeout = httpx2.Timeout(
        connect=settings.connect_timeout, read=settings.read_timeout, write=settings.read_timeout, pool=settings.connect_timeout
    )
    return httpx2.Client(
        event_hooks={"request": [hf_request_event_hook]},
        follow_redirects=True,
        timeout=timeout,
        transport=_make_transport(settings),
    )


class _QuietRetries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(marker in message for marker in _QUIET_MARKERS)


_lock = threading.Lock()
_installed_for: NetworkSettings | None = None


def configure() -> NetworkSettings:
    """Install cones2's client factory (again when the settings changed); returns the settings."""
    global _installed_for
    settings = network_settings()
    with _lock:
        if _installed_for != settings:
            from huggingface_hub import constants, set_client_factory

            set_client_factory(_client_factory)
            # hf_hub_download reads these at call time; the HF_* variables still win when set
            if not os.environ.get("HF_HUB_ETAG_TIMEOUT"):
                constants.HF_HUB_ETAG_TIMEOUT = settings.read_timeout  # type: ignore[assignment]
            if not os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT"):
                constants.HF_HUB_DOWNLOAD_TIMEOUT = settings.read_timeout  # type: ignore[assignment]
            logger = logging.getLogger("huggingface_hub.utils._http")
            if not any(isinstance(f, _QuietRetries) for f in logger.filters):
                logger.addFilter(_QuietRetries())
            _installed_for = settings
    return settings
