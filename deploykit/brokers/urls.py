"""Broker and management URLs, in one place: parsing, broker kinds, masking, the management API.

Every other module asks this one what a URL means; none of them splits a URL itself.

* **Failover lists.** kombu accepts ``url1;url2;…`` and uses the first URL's transport for all of
  them (``kombu.connection.Connection.__init__`` splits on ``;``); so do we.
* **Kinds.** ``redis`` (``redis://``, ``rediss://``, ``redis+socket://``, ``sentinel://``),
  ``rabbitmq`` (``amqp://``, ``amqps://``, ``pyamqp://``, ``librabbitmq://``), ``filesystem``; any
  other scheme is its own kind (the kombu transport of that name, ``sqs``, ``memory``, …).
* **Validation.** What kombu would refuse at connect time is refused here, before any network
  traffic, as a usage error: a malformed host (``amqp://[::1``), a port that is not a number or out
  of range, a Redis database that is not an integer (kombu's ``Channel._prepare_virtual_host``:
  ``Database is int between 0 and limit - 1``; redis-py silently ignores it instead).
* **Masking.** A password is shown as ``***``: ``amqp://guest:***@host//``, the same in text,
  JSON, errors and logs. The user information runs up to the *last* ``@`` of a URL, so a password
  with an unescaped ``@`` or ``/`` is still masked whole (fail closed).
* **Management API.** RabbitMQ's HTTP API defaults to the broker's host, port 15672, the broker's
  credentials (``guest``/``guest`` without any); an explicit URL keeps its own port (a reverse
  proxy on 443 is a real setup) and any path prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from deploykit.errors import UsageError

REDIS_SCHEMES = frozenset({"redis", "rediss", "redis+socket", "sentinel"})
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp", "librabbitmq"})
FILESYSTEM_SCHEMES = frozenset({"filesystem"})
#: RabbitMQ's management plugin listens here by default (https://www.rabbitmq.com/docs/management).
MANAGEMENT_PORT = 15672
MASK = "***"

_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*$", re.I)
#: A URL's user information inside free text (error messages of libraries): up to the next ``@``.
_TEXT_USERINFO = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^:/@;\s]*:)(?P<pw>[^@;\s/]*)(?=@)", re.I)


# -- masking ----------------------------------------------------------------------------------
def _userinfo_span(part: str) -> tuple[int, int] | None:
    """Start and end of the password in one URL (``None`` when it has none).

    A URL missing its ``scheme://`` (``guest:pw@host``, a common slip) is masked all the same.
    """
    head = part.find("://")
    start = head + 3 if head >= 0 else 0
    at = part.rfind("@", start)
    if at < 0:
        return None
    colon = part.find(":", start, at)
    if colon < 0 or colon + 1 == at:
        return None
    return colon + 1, at


def mask_url(url: str | None) -> str | None:
    """``url`` with the password of every URL in it (``;``-separated lists too) replaced by ``***``."""
    if url is None:
        return None
    masked = []
    for part in url.split(";"):
        span = _userinfo_span(part)
        masked.append(part if span is None else part[: span[0]] + MASK + part[span[1] :])
    return ";".join(masked)


def url_passwords(url: str | None) -> list[str]:
    """The passwords in ``url``, raw and percent-decoded, for scrubbing free text."""
    found: list[str] = []
    for part in (url or "").split(";"):
        span = _userinfo_span(part)
        if span is not None:
            raw = part[span[0] : span[1]]
            found.extend(dict.fromkeys((raw, unquote(raw))))
    return found


class Redactor:
    """Scrubs passwords from any text before it is shown (errors, logs, JSON, tracebacks).

    The URLs it was given, and any other URL in the text, are masked like :func:`mask_url`; the
    passwords of the URLs it was given are then replaced wherever else they appear
    (percent-decoded in a library's message, say). Everywhere: a password that is also the user
    name (``guest:guest``) shows as ``***:***@`` rather than being given away as the user name.
    """

    def __init__(self, secrets: list[str] | None = None) -> None:
        self._secrets: list[str] = []
        self._urls: dict[str, str] = {}  # a URL given, as written -> masked
        self._add(secrets or [])

    def _add(self, secrets: list[str]) -> None:
        self._secrets = sorted({s for s in [*self._secrets, *secrets] if s}, key=len, reverse=True)

    def add_url(self, url: str | None) -> None:
        self._add(url_passwords(url))
        for part in split_failover(url or ""):
            masked = mask_url(part) or part
            if masked != part:
                self._urls[part] = masked

    def __call__(self, text: str) -> str:
        for raw in sorted(self._urls, key=len, reverse=True):
            text = text.replace(raw, self._urls[raw])
        text = _TEXT_USERINFO.sub(lambda m: m.group("head") + MASK if m.group("pw") else m.group(0), text)
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


# -- parsing ----------------------------------------------------------------------------------
def split_failover(url: str) -> list[str]:
    """The URLs of a ``;``-separated failover list, stripped, empty entries dropped."""
    return [part.strip() for part in url.split(";") if part.strip()]


def first_url(url: str) -> str:
    """The first URL of a failover list (the one whose scheme picks the transport)."""
    parts = split_failover(url)
    return parts[0] if parts else ""


@dataclass(frozen=True)
class UrlParts:
    """One URL, split and checked; user name and password percent-decoded."""

    scheme: str
    username: str | None
    password: str | None
    hostname: str | None
    port: int | None
    path: str
    query: str

    def query_value(self, *names: str) -> str | None:
        """The first of ``names`` present in the query string."""
        query = dict(parse_qsl(self.query))
        for name in names:
            if name in query:
                return query[name]
        return None


def split_url(url: str, *, what: str = "broker URL") -> UrlParts:
    """Split one URL; a malformed one is a :class:`UsageError` naming it (password masked)."""
    scheme, sep, _ = url.partition("://")
    if not sep or not _SCHEME.match(scheme):
        raise UsageError(f"invalid {what} {mask_url(url)!r}: expected SCHEME://…")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", "Port could not be cast…"
        raise UsageError(f"invalid {what} {mask_url(url)!r}: {str(exc).lower()}") from None
    return UrlParts(
        scheme=parts.scheme.lower(),
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        hostname=parts.hostname,
        port=port,
        path=parts.path,
        query=parts.query,
    )


def kind_of_scheme(scheme: str) -> str:
    """``redis``, ``rabbitmq``, ``filesystem``, or the scheme itself (another kombu transport)."""
    scheme = scheme.lower()
    if scheme in REDIS_SCHEMES:
        return "redis"
    if scheme in AMQP_SCHEMES:
        return "rabbitmq"
    if scheme in FILESYSTEM_SCHEMES:
        return "filesystem"
    return scheme


def broker_kind(url: str | None) -> str | None:
    """The broker kind of ``url`` (see :func:`kind_of_scheme`); ``None`` when there is no usable URL.

    Never raises: for display (``doctor``) a malformed URL is simply of no known kind.
    """
    if not url:
        return None
    scheme, sep, _ = first_url(url).partition("://")
    if not sep or not _SCHEME.match(scheme):
        return None
    return kind_of_scheme(scheme)


@dataclass(frozen=True)
class BrokerUrl:
    """A broker URL (a failover list too), checked: every URL in it parses."""

    url: str
    scheme: str
    kind: str
    urls: tuple[UrlParts, ...]

    @property
    def display(self) -> str:
        return mask_url(self.url) or ""

    @property
    def first(self) -> UrlParts:
        return self.urls[0]


def _redis_db(parts: UrlParts, url: str) -> int | None:
    """The database number one URL names (``Channel._prepare_virtual_host``); ``None``: none."""
    # kombu: redis+socket:///path/to/socket?virtual_host=N; otherwise the path: redis://h:6379/N
    raw = (parts.query_value("virtual_host", "db") or "0") if parts.scheme == "redis+socket" else parts.path
    raw = raw[1:] if raw.startswith("/") else raw
    if not raw:
        return None
    if not raw.isdigit():
        raise UsageError(
            f"invalid broker URL {mask_url(url)!r}: the Redis database must be a number, not {raw!r}"
        )
    return int(raw)


def parse_broker_url(url: str) -> BrokerUrl:
    """Check ``url`` the way kombu would before connecting; a bad one is a :class:`UsageError`."""
    parts = split_failover(url)
    if not parts:
        raise UsageError(f"invalid broker URL {mask_url(url)!r}: expected SCHEME://…")
    parsed = tuple(split_url(part) for part in parts)
    scheme = parsed[0].scheme
    kind = kind_of_scheme(scheme)
    if kind == "redis":
        redis_db(url)
    return BrokerUrl(url=url, scheme=scheme, kind=kind, urls=parsed)


def redis_db(url: str) -> int:
    """The Redis database a Redis broker URL names (0 when none does).

    In a failover list (``sentinel://h1:26379;sentinel://h2:26379/3``) the entries that name a
    database must agree: kombu switches to the next entry's database when it fails over.
    """
    named = set()
    for part in split_failover(url):
        db = _redis_db(split_url(part), part)
        if db is not None:
            named.add(db)
    if len(named) > 1:
        raise UsageError(
            f"invalid broker URL {mask_url(url)!r}: its failover URLs name different Redis databases"
        )
    return named.pop() if named else 0


def vhost_of(url: str) -> str:
    """The AMQP virtual host named by ``url``'s path, percent-decoded; ``/`` when there is none.

    kombu's rule: ``amqp://h//`` and ``amqp://h/%2F`` are both ``/``.
    """
    path = urlsplit(first_url(url)).path
    vhost = unquote(path[1:] if path.startswith("/") else path)
    return vhost or "/"


# -- result backends --------------------------------------------------------------------------
#: Result backends that keep nothing another process can read back: ``rpc://`` sends each result
#: to the caller as a message, ``amqp://`` is its pre-Celery-5 name, ``disabled`` stores nothing.
NON_STORING_BACKENDS = frozenset({"rpc", "amqp", "disabled"})


def backend_scheme(backend: object) -> str:
    """The scheme of a result backend URL, lower-cased, without its driver (``db+postgresql://``
    is ``db``); ``""`` when there is none."""
    text = str(backend or "")
    return text.split("://", 1)[0].split("+", 1)[0].strip().lower()


# -- RabbitMQ management API --------------------------------------------------------------------
@dataclass(frozen=True)
class ManagementEndpoint:
    """Where the management API lives and how to log in to it."""

    base_url: str
    auth: tuple[str, str] | None
    display_url: str


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def default_management_url(broker_url: str | None) -> str | None:
    """The management API of an AMQP broker URL: same host and credentials, port 15672.

    ``None`` for other kinds; a malformed broker URL is a :class:`UsageError`.
    """
    if not broker_url or broker_kind(broker_url) != "rabbitmq":
        return None
    parts = split_url(first_url(broker_url))
    scheme = "https" if parts.scheme == "amqps" else "http"
    user = parts.username if parts.username is not None else "guest"
    password = parts.password if parts.password is not None else "guest"
    host = _bracket(parts.hostname or "localhost")
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}:{MANAGEMENT_PORT}"
    return urlunsplit((scheme, netloc, "/", "", ""))


def management_endpoint(management_url: str, broker_url: str) -> ManagementEndpoint:
    """Split ``management_url`` into a base URL (keeping any path prefix) and credentials.

    Credentials default to the broker URL's (``guest``/``guest`` when it has none), like
    :func:`default_management_url`.
    """
    problem = UsageError(
        f"invalid management URL {mask_url(management_url)!r}: expected http(s)://USER:PASSWORD@HOST:15672/"
    )
    try:
        parts = split_url(management_url.strip(), what="management URL")
    except UsageError:
        raise problem from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise problem
    if parts.username is not None:
        auth = (parts.username, parts.password or "")
    else:
        broker = split_url(first_url(broker_url)) if broker_url.strip() else None
        auth = (
            broker.username if broker is not None and broker.username is not None else "guest",
            broker.password if broker is not None and broker.password is not None else "guest",
        )
    host = _bracket(parts.hostname)
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return ManagementEndpoint(base, auth, mask_url(management_url) or management_url)
