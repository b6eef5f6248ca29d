"""Flower with this app's rules: loopback by default, and never served beyond loopback without auth.

`celery -A worker flower` imports this app before Flower parses its options (flags, FLOWER_* variables,
flowerconfig.py); a tornado parse callback then checks the final address and auth before anything listens.
"""

from __future__ import annotations

import ipaddress
import logging
import sys

log = logging.getLogger(__name__)


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_flower_options(address: str, basic_auth: list[str], auth: str) -> str:
    """The address Flower may listen on; raises SystemExit when it would be exposed without auth."""
    address = address or "127.0.0.1"  # Flower's own default ("") means every interface
    if not is_loopback(address) and not basic_auth and not auth:
        raise SystemExit(
            f"refusing to serve Flower on {address} without authentication: set FLOWER_BASIC_AUTH=user:password "
            "(or an OAuth --auth), or listen on 127.0.0.1"
        )
    return address


def _apply() -> None:
    from tornado.options import options

    from worker.settings import get_settings

    configured = get_settings().flower_basic_auth  # FLOWER_BASIC_AUTH from the environment or .env
    if not options.basic_auth and configured is not None:
        options.basic_auth = [configured.get_secret_value()]
    options.address = check_flower_options(options.address, options.basic_auth or [], options.auth or "")
    log.info("Flower listens on %s (%s)", options.address, "auth on" if options.basic_auth else "loopback only")


def install() -> None:
    """Register the check when this process is `celery ... flower`."""
    if "flower" in sys.argv[1:]:
        from tornado.options import options

        options.add_parse_callback(_apply)
