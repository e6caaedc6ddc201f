"""reviewstack-web: the web page.

Run book:
    REVIEWSTACK_REVIEW_SERVICES='{"reviewer": "127.0.0.1:50051"}' \\
    REVIEWSTACK_EVALUATION_SERVICE=127.0.0.1:50052 REVIEWSTACK_STORE=./store \\
    REVIEWSTACK_LOGIN_TOKEN_FILE=login-token REVIEWSTACK_GRPC_TOKEN_FILE=grpc-token reviewstack-web

Every setting is a `REVIEWSTACK_*` variable or the same-named flag (`--help`). People log in with the
login token; the page calls the gRPC services with the gRPC token, which never reaches a browser.
Behind an authenticating proxy (an ingress with oauth2-proxy), REVIEWSTACK_LOGIN=proxy drops the login.
"""

from __future__ import annotations

import signal
import sys

import uvicorn

from reviewstack.common import errors
from reviewstack.common.logging import configure_logging, get_logger
from reviewstack.web.app import create_app
from reviewstack.web.settings import WebSettings

log = get_logger(__name__)


def main() -> None:
    settings = WebSettings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        if not settings.review_services:
            raise errors.InvalidArgument(
                'no Review service to call: set REVIEWSTACK_REVIEW_SERVICES=\'{"name": "host:port"}\''
            )
        app = create_app(settings)
    except errors.ReviewStackError as exc:
        log.error("cannot start the web page", error=str(exc))
        raise SystemExit(2) from None
    log.info(
        "web page serving",
        host=settings.host,
        port=settings.port,
        systems=list(settings.review_services),
        evaluation=settings.evaluation_service or None,
        login=settings.login,
    )
    # uvicorn drains on SIGTERM/SIGINT and then re-raises the signal for the handler it found: a no-op
    # one lets a drained server exit 0, like the gRPC services
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
