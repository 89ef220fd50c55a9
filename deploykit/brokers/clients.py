"""Broker client libraries: present in the user's environment, or one line saying what to install.

deploykit installs no broker client itself (it runs inside the user's environment, next to their
pins): kombu needs ``redis`` only for ``redis://`` URLs, ``boto3`` and ``pycurl`` only for
``sqs://``, and so on. kombu reports a missing one late and in its own words: an ``ImportError``
when the transport module loads (kombu's Redis transport imports ``packaging`` unguarded since
kombu 5.4), when the transport is created (``Missing redis library (pip install redis)``,
``boto3 is not installed``), or only at the first request (SQS's HTTP client:
``The curl client requires the pycurl library.``). :func:`require_client_libraries` asks before
any broker is used: it loads kombu's transport for the URL (no network traffic) and checks the
libraries kombu only imports later.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from typing import Any

from deploykit.errors import UsageError

#: Libraries a transport needs that kombu imports only at the first request, by URL scheme.
#: kombu's SQS transport talks HTTP through ``kombu.asynchronous.http.curl`` (kombu 5.3 to 5.7).
LATE_IMPORTS: Mapping[str, tuple[str, ...]] = {"sqs": ("pycurl",)}

#: deploykit's own broker code for these schemes imports the client directly (``brokers/redis.py``).
OWN_IMPORTS: Mapping[str, tuple[str, ...]] = dict.fromkeys(
    ("redis", "rediss", "redis+socket", "sentinel"), ("redis",)
)

#: The pip distribution for an import name, where they differ.
DISTRIBUTIONS: Mapping[str, str] = {
    "yaml": "PyYAML",
    "botocore": "boto3",
    "consul": "python-consul2",
    "etcd": "python-etcd",
    "confluent_kafka": "confluent-kafka",
    "google": "google-cloud-pubsub",
    "softlayer_messaging": "softlayer-messaging",
}

#: What kombu's own "library missing" messages name, by transport scheme, when the message does
#: not say ``pip install …`` itself.
KNOWN_CLIENTS: Mapping[str, str] = {
    "sqs": "boto3",
    "mongodb": "pymongo",
    "zookeeper": "kazoo",
    "consul": "python-consul2",
    "etcd": "python-etcd",
    "confluentkafka": "confluent-kafka",
    "azurestoragequeues": "azure-storage-queue",
    "azureservicebus": "azure-servicebus",
    "librabbitmq": "librabbitmq",
    "gcpubsub": "google-cloud-pubsub",
    "pgmq": "pgmq",
    "qpid": "qpid-python",
    "slmq": "softlayer-messaging",
    "pyro": "Pyro4",
}

_PIP_INSTALL = re.compile(r"pip install ([A-Za-z0-9_.\-\[\]]+)")


def require_client_libraries(
    url: str, scheme: str, display_url: str, transport_options: Mapping[str, Any] | None = None
) -> None:
    """Raise :class:`UsageError` (exit 2) naming what to ``pip install`` when the broker client
    library for ``url`` is not installed; do nothing otherwise. No network traffic."""
    missing = [name for name in OWN_IMPORTS.get(scheme, ()) if not _importable(name)]
    if missing:
        raise _missing(scheme, display_url, [_distribution(name) for name in missing])
    try:
        from kombu import Connection

        Connection(url, transport_options=dict(transport_options or {})).transport  # noqa: B018
    except ImportError as exc:
        raise _missing(scheme, display_url, [_named_by(exc, scheme)], detail=str(exc)) from None
    except KeyError:  # a scheme kombu does not know: open_broker() says so
        return
    missing = [name for name in LATE_IMPORTS.get(scheme, ()) if not _importable(name)]
    if missing:
        raise _missing(scheme, display_url, [_distribution(name) for name in missing])


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module without a spec
        return False


def _distribution(module: str) -> str:
    top = module.split(".")[0]
    return DISTRIBUTIONS.get(top, top)


def _named_by(exc: ImportError, scheme: str) -> str:
    """The package to install, from kombu's ImportError: the module that failed to import, the
    ``pip install X`` kombu suggests, or the transport's known client."""
    if exc.name:
        # Importable but failing (``cannot import name …``): a version problem, not a missing one.
        return "" if _importable(exc.name) else _distribution(exc.name)
    suggested = _PIP_INSTALL.search(str(exc))
    if suggested:
        return suggested.group(1)
    return KNOWN_CLIENTS.get(scheme, "")


def _missing(scheme: str, display_url: str, packages: list[str], *, detail: str = "") -> UsageError:
    packages = [p for p in packages if p]
    if not packages:  # kombu named no library we know: its own message says what is missing
        return UsageError(
            f"broker {display_url}: the {scheme}:// transport cannot load in this environment: {detail}"
        )
    names = " and ".join(repr(p) for p in packages)
    what = f"package {names}, which is" if len(packages) == 1 else f"packages {names}, which are"
    return UsageError(
        f"broker {display_url}: {scheme}:// needs the Python {what} not installed in this "
        f"environment: pip install {' '.join(packages)}"
    )
