"""The RabbitMQ management HTTP API: the one client deploykit uses for it.

Endpoints used (https://www.rabbitmq.com/docs/http-api-reference):

* ``GET /api/queues/{vhost}`` with ``columns=…`` and pagination (:meth:`ManagementAPI.list_queues`):
  queue counters, types, arguments and policies (``brokers/rabbitmq.py``, ``rabbitmq_policies.py``);
* ``GET /api/vhosts/{vhost}`` and ``GET /api/overview``: whether a 404 means "no such vhost";
* ``POST /api/queues/{vhost}/{name}/get``: sampling messages (``scan --peek``), which is *not* a read
  (see :meth:`deploykit.brokers.rabbitmq.RabbitMQBroker.peek_messages`);
* ``GET/PUT/DELETE /api/global-parameters/{name}``: the drain record (``brokers/records.py``).

Where the API lives and its credentials come from :func:`deploykit.brokers.urls.management_endpoint`.
Every failure of the HTTP library becomes :class:`ManagementDown` with a message free of
passwords; an unexpected answer (status, body) too. Callers decide what that means for them: a
fallback with a note (queue counts, policies) or an error (the drain record, ``--peek``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from deploykit.brokers.urls import ManagementEndpoint, Redactor

#: The management API's largest page (https://www.rabbitmq.com/docs/http-api-reference, pagination).
PAGE_SIZE = 500
#: A vhost with more queues than this is listed partially rather than hammering the API.
MAX_PAGES = 40


class ManagementDown(Exception):
    """The management API cannot be used.

    ``problem`` completes "management API …" (it names the endpoint); ``reason`` is the short
    cause alone (``connection refused``); ``status`` the HTTP status when the API answered one;
    ``cause`` the HTTP library's exception when there was one.
    """

    def __init__(
        self, problem: str, *, reason: str = "", status: int | None = None, cause: BaseException | None = None
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.reason = reason or problem
        self.status = status
        self.cause = cause


class NoSuchVhost(Exception):
    """The management API answered 404 for a vhost it does not know."""

    def __init__(self, vhost: str) -> None:
        super().__init__(vhost)
        self.vhost = vhost


def _segment(value: str) -> str:
    """One path segment of an API URL (``/`` in a vhost or queue name is quoted)."""
    return quote(value, safe="")


class ManagementAPI:
    """An HTTP client for one management endpoint (opened on first use, closed by :meth:`close`)."""

    def __init__(
        self,
        endpoint: ManagementEndpoint,
        *,
        timeout: float | httpx.Timeout = 5.0,
        transport: httpx.BaseTransport | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        """``transport`` replaces the network in unit tests (``httpx.MockTransport``)."""
        self.endpoint = endpoint
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._transport = transport
        #: Masks the endpoint's password (and, given the caller's, the broker URL's) in messages.
        self._redact = redactor or Redactor([endpoint.auth[1]] if endpoint.auth else [])
        self._http: httpx.Client | None = None

    @property
    def display_url(self) -> str:
        """The endpoint as shown to people (password masked)."""
        return self.endpoint.display_url

    # -- transport --------------------------------------------------------------------------
    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                base_url=self.endpoint.base_url,
                auth=self.endpoint.auth,
                timeout=self._timeout,
                transport=self._transport,
                follow_redirects=False,
            )
        return self._http

    def describe_error(self, exc: BaseException) -> str:
        """A library error in a few words, with no password."""
        text = self._redact(str(exc)) or type(exc).__name__
        lowered = text.lower()
        if "refused" in lowered:
            return "connection refused"
        if "name or service not known" in lowered or "nodename nor servname" in lowered:
            return "host name does not resolve"
        return text

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; the HTTP library's errors become :class:`ManagementDown`."""
        where = self.display_url
        try:
            return self._client().request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            wait = self._timeout.read
            within = f"within {wait:g}s" if wait is not None else "in time"
            raise ManagementDown(
                f"unreachable at {where} (no answer {within})", reason=self.describe_error(exc), cause=exc
            ) from None
        except httpx.HTTPError as exc:
            reason = self.describe_error(exc)
            raise ManagementDown(f"unreachable at {where} ({reason})", reason=reason, cause=exc) from None

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ManagementDown(
                f"at {self.display_url} did not answer JSON (is it the management API?)",
                reason="the management API did not answer JSON",
                status=response.status_code,
            ) from None

    @staticmethod
    def _refused(response: httpx.Response, problem: str) -> ManagementDown:
        status = response.status_code
        return ManagementDown(problem, reason=f"the management API answered HTTP {status}", status=status)

    # -- queues -----------------------------------------------------------------------------
    def list_queues(
        self, vhost: str, columns: str, *, page_size: int = PAGE_SIZE, max_pages: int = MAX_PAGES
    ) -> list[Mapping[str, Any]]:
        """Every queue of ``vhost`` with ``columns``, paginated (one request up to ``page_size``
        queues, at most ``max_pages`` requests). :class:`NoSuchVhost` when the API does not know
        the vhost; :class:`ManagementDown` for anything else that goes wrong."""
        where = self.display_url
        path = f"/api/queues/{_segment(vhost)}"
        rows: list[Mapping[str, Any]] = []
        page = 1
        while True:
            params: dict[str, str | int] = {
                "columns": columns,
                "pagination": "true",
                "page": page,
                "page_size": page_size,
            }
            response = self.request("GET", path, params=params)
            if response.status_code == 401:
                raise self._refused(
                    response,
                    f"at {where} rejected the credentials (HTTP 401; the user also needs the "
                    "'monitoring' or 'management' tag)",
                )
            if response.status_code == 404:
                if self._vhost_missing(vhost):
                    raise NoSuchVhost(vhost)
                raise self._refused(
                    response, f"at {where} answered HTTP 404 (is it the RabbitMQ management API?)"
                )
            if response.status_code != 200:
                raise self._refused(response, f"at {where} answered HTTP {response.status_code}")
            data = self._json(response)
            if isinstance(data, list):  # a server that ignores ``pagination``
                rows.extend(r for r in data if isinstance(r, dict))
                return rows
            if not isinstance(data, dict) or not isinstance(data.get("items"), list):
                raise ManagementDown(f"at {where} answered an unexpected document")
            rows.extend(r for r in data["items"] if isinstance(r, dict))
            page_count = data.get("page_count")
            if not isinstance(page_count, int) or page >= page_count or page >= max_pages:
                return rows
            page += 1

    def _vhost_missing(self, vhost: str) -> bool:
        """After a 404: ``True`` only when the API answers and knows no such vhost."""
        try:
            answer = self.request("GET", f"/api/vhosts/{_segment(vhost)}")
            overview = self.request("GET", "/api/overview") if answer.status_code == 404 else None
        except ManagementDown:
            return False
        return overview is not None and overview.status_code == 200

    def get_messages(self, vhost: str, queue: str, count: int) -> list[Mapping[str, Any]]:
        """``POST /api/queues/{vhost}/{queue}/get`` with ``ack_requeue_true``: up to ``count``
        messages, base64 payloads. It alters the queue (redelivered flags, delivery counts)."""
        path = f"/api/queues/{_segment(vhost)}/{_segment(queue)}/get"
        body = {"count": int(count), "ackmode": "ack_requeue_true", "encoding": "base64"}
        response = self.request("POST", path, json=body)
        if response.status_code != 200:
            raise self._refused(response, f"at {self.display_url} answered HTTP {response.status_code}")
        items = self._json(response)
        return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []

    # -- global parameters ------------------------------------------------------------------
    def _parameter_path(self, name: str) -> str:
        return f"/api/global-parameters/{_segment(name)}"

    def _checked(self, response: httpx.Response, *, missing_ok: bool) -> httpx.Response | None:
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 400:
            raise self._refused(response, f"at {self.display_url} answered HTTP {response.status_code}")
        return response

    def global_parameter(self, name: str) -> Any:
        """The value of global parameter ``name``; ``None`` when there is none (or no JSON)."""
        response = self._checked(self.request("GET", self._parameter_path(name)), missing_ok=True)
        if response is None:
            return None
        try:
            document = response.json()
        except ValueError:
            return None
        return document.get("value") if isinstance(document, Mapping) else None

    def set_global_parameter(self, name: str, value: Any) -> None:
        """Create or replace global parameter ``name`` (needs the ``administrator`` tag)."""
        path = self._parameter_path(name)
        self._checked(self.request("PUT", path, json={"name": name, "value": value}), missing_ok=False)

    def delete_global_parameter(self, name: str) -> None:
        """Delete global parameter ``name``; one that is already gone is fine."""
        self._checked(self.request("DELETE", self._parameter_path(name)), missing_ok=True)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
