"""Which ``Host`` headers name this server: the guard against DNS rebinding.

A browser sends, in ``Host``, the name from the URL it loaded. A page of another site that points its own DNS name
at this machine (DNS rebinding) can reach a service on localhost, but its requests then carry that other name, and
are refused.

>>> names = host_names("127.0.0.1", "127.0.0.1")
>>> host_allowed("localhost:8000", names, 8000), host_allowed("attacker.example:8000", names, 8000)
(True, False)
"""

from __future__ import annotations

import ipaddress
import re

# A Host header: a DNS name or IPv4 address, or an IPv6 address in brackets, then an optional port.
_HOST = re.compile(r"(?P<name>\[[0-9A-Za-z:.%]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_names(host: str, bound: str, extra: tuple[str, ...] = ()) -> frozenset[str] | None:
    """Names (no port) a request's ``Host`` may give for a server bound to ``bound`` as ``host``; None: any IP.

    Bound to loopback: ``host``, ``bound`` and localhost/127.0.0.1/::1. Bound to one address: ``host`` and
    ``bound``. Bound to all addresses (0.0.0.0, ::): the server cannot know its names, so any IP address literal
    is taken (a DNS-rebinding page always uses a DNS name) plus localhost; ``extra`` adds names in every case.
    """
    address = ipaddress.ip_address(bound.split("%")[0])
    if address.is_unspecified:
        return None
    names = {host.strip("[]").lower(), bound.lower(), *extra}
    return frozenset(names | LOOPBACK_NAMES if address.is_loopback else names)


def host_allowed(header: str | None, names: frozenset[str] | None, port: int, extra: tuple[str, ...] = ()) -> bool:
    """Whether a ``Host`` header names this server: an allowed name (see :func:`host_names`) and ``port`` (a
    header without a port means 80)."""
    m = _HOST.fullmatch((header or "").strip())
    if m is None or int(m["port"] or 80) != port:
        return False
    name = m["name"].strip("[]").lower()
    if names is not None:
        return name in names
    if name in LOOPBACK_NAMES or name in extra:
        return True
    try:
        ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        return False
    return True
