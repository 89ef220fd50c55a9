"""deploykit.brokers.urls: the one owner of broker URLs (kinds, checks, masking, management API)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from deploykit.brokers.urls import (
    Redactor,
    broker_kind,
    default_management_url,
    management_endpoint,
    mask_url,
    parse_broker_url,
    redis_db,
    url_passwords,
)
from deploykit.errors import UsageError


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://h:6379/0", "redis"),
        ("rediss://h:6380/1", "redis"),
        ("redis+socket:///tmp/redis.sock?virtual_host=2", "redis"),
        ("sentinel://h1:26379;sentinel://h2:26379", "redis"),
        ("SENTINEL://h1:26379", "redis"),
        ("amqp://guest:guest@h//", "rabbitmq"),
        ("amqps://h//", "rabbitmq"),
        ("pyamqp://h//", "rabbitmq"),
        ("librabbitmq://h//", "rabbitmq"),
        ("filesystem://", "filesystem"),
        ("sqs://", "sqs"),
        ("memory://", "memory"),
        (" redis://h/0 ; redis://h2/0", "redis"),
    ],
)
def test_one_table_of_kinds(url: str, kind: str) -> None:
    assert broker_kind(url) == kind
    assert parse_broker_url(url).kind == kind


@pytest.mark.parametrize("url", [None, "", "nonsense", "://h", ";;", "1redis://h"])
def test_no_kind_for_what_is_not_a_url(url: str | None) -> None:
    assert broker_kind(url) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("amqp://[::1", "invalid ipv6 url"),
        ("amqp://u:hunter2@[::1", "invalid ipv6 url"),
        ("redis://host:6379/abc", "the Redis database must be a number, not 'abc'"),
        ("redis+socket:///tmp/r.sock?virtual_host=x", "the Redis database must be a number"),
        ("redis://h:99999/0", "port out of range"),
        ("redis://h:port/0", "port could not be cast"),
        ("sentinel://h1:26379/1;sentinel://h2:26379/2", "name different Redis databases"),
        ("nonsense", "expected SCHEME://"),
        ("", "expected SCHEME://"),
    ],
)
def test_malformed_broker_urls_are_usage_errors_with_the_password_masked(url: str, problem: str) -> None:
    with pytest.raises(UsageError, match="invalid broker URL") as caught:
        parse_broker_url(url)
    assert problem in caught.value.message
    assert "hunter2" not in caught.value.message


def test_redis_database_follows_kombu() -> None:
    assert redis_db("redis://h:6379") == 0
    assert redis_db("redis://h:6379/") == 0
    assert redis_db("redis://h:6379/7") == 7
    assert redis_db("redis+socket:///tmp/r.sock?virtual_host=3") == 3
    assert redis_db("sentinel://h1:26379;sentinel://h2:26379/3") == 3


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:guest@h//", "amqp://guest:***@h//"),
        ("amqp://u:p%40ss@h1//;amqp://u:other@h2//", "amqp://u:***@h1//;amqp://u:***@h2//"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("amqp://user@h//", "amqp://user@h//"),
        ("amqp://user:@h//", "amqp://user:@h//"),
        # Unescaped '@' or '/' in a password: masked whole, up to the last '@' (fail closed).
        ("amqp://u:p@ss/w@h//", "amqp://u:***@h//"),
        ("amqp://u:pa/ss@h:5672/vh", "amqp://u:***@h:5672/vh"),
        ("amqp://u:p w@h//", "amqp://u:***@h//"),
        ("guest:pw@localhost:5672", "guest:***@localhost:5672"),
        ("localhost:5672", "localhost:5672"),
    ],
)
def test_one_mask_format(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_redactor_masks_urls_like_mask_url_and_scrubs_passwords_everywhere() -> None:
    redactor = Redactor()
    redactor.add_url("amqp://app:s3cr3t@h//")
    assert redactor("cannot reach amqp://app:s3cr3t@h// (s3cr3t)") == "cannot reach amqp://app:***@h// (***)"
    redactor.add_url("redis://:p%40ss@h/0")
    assert redactor("AUTH p@ss failed; AUTH p%40ss failed") == "AUTH *** failed; AUTH *** failed"
    # A password with an unescaped '@': the whole URL is masked, not just up to the first '@'.
    redactor.add_url("amqp://u:0@x@mq//")
    assert redactor("to amqp://u:0@x@mq// failed") == "to amqp://u:***@mq// failed"
    # The user name is kept, unless it is the password itself (fail closed).
    guest = Redactor()
    guest.add_url("amqp://guest:guest@h//")
    assert guest("amqp://guest:guest@h//") == "amqp://***:***@h//"


@given(
    st.text(
        alphabet=st.characters(blacklist_characters=";", blacklist_categories=("Cs",), min_codepoint=33),
        min_size=1,
        max_size=30,
    )
)
def test_any_password_is_masked_and_scrubbed(password: str) -> None:
    # A password of mask characters only ("*", "**") is its own mask: nothing to hide it in.
    assume(password.strip("*"))
    for pw in (password, quote(password, safe="")):
        url = f"amqp://user:{pw}@host:5672/vh"
        assert mask_url(url) == "amqp://user:***@host:5672/vh"
        assert pw in url_passwords(url)
        redactor = Redactor()
        redactor.add_url(url)
        shown = redactor(f"failed: {url} ({pw})")
        assert pw not in shown


def test_management_url_derivation_is_one_rule() -> None:
    assert (
        default_management_url("amqp://guest:guest@localhost:5672//") == "http://guest:guest@localhost:15672/"
    )
    assert default_management_url("amqps://u:p@h/vh") == "https://u:p@h:15672/"
    assert default_management_url("amqp://h") == "http://guest:guest@h:15672/"
    assert default_management_url("amqp://[::1]:5672//") == "http://guest:guest@[::1]:15672/"
    assert default_management_url("redis://h/0") is None
    with pytest.raises(UsageError):
        default_management_url("amqp://[::1")
    derived = management_endpoint(default_management_url("amqp://app:s%2Fcret@mq//") or "", "amqp://mq//")
    assert derived.base_url == "http://mq:15672" and derived.auth == ("app", "s/cret")
    # An explicit URL keeps its own port and path (a reverse proxy), credentials from the broker.
    proxied = management_endpoint("https://mq.example/rabbitmq/", "amqp://app:pw@mq//")
    assert proxied.base_url == "https://mq.example/rabbitmq" and proxied.auth == ("app", "pw")


def test_one_rule_for_result_backends_that_store_nothing() -> None:
    from deploykit.brokers.urls import NON_STORING_BACKENDS, backend_scheme

    assert backend_scheme("db+postgresql://u:p@h/db") == "db"
    assert backend_scheme("RPC://") == "rpc"
    assert backend_scheme("disabled") == "disabled"
    assert backend_scheme(None) == ""
    assert {backend_scheme(b) for b in ("rpc://", "amqp://", "disabled")} == NON_STORING_BACKENDS
    assert backend_scheme("redis://h/1") not in NON_STORING_BACKENDS
