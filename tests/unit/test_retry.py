"""The retry decision and delay are pure functions: table tests, no clock, no sleeping."""

from __future__ import annotations

import email.utils

import pytest

from siliconflow_rerank import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    InvalidRequestError,
    ResponseValidationError,
    RetryPolicy,
)
from siliconflow_rerank._retry import is_retryable, retry_after_seconds, retry_delay


def status(code: int) -> APIStatusError:
    return APIStatusError(status_code=code, message="m")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (APIConnectionError("reset"), True),
        (APITimeoutError("slow"), True),
        (status(408), True),
        (status(429), True),
        (status(500), True),
        (status(502), True),
        (status(503), True),
        (status(504), True),
        (status(400), False),
        (status(401), False),
        (status(403), False),
        (status(404), False),
        (status(413), False),
        (status(422), False),
        (ResponseValidationError("bad"), False),
        (InvalidRequestError("bad"), False),
    ],
)
def test_is_retryable(error, expected):
    assert is_retryable(error) is expected


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"Retry-After": "-4"}, 0.0),
        ({"retry-after-ms": "1200"}, 1.2),
        ({"retry-after-ms": "300", "Retry-After": "9"}, 0.3),
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),
        ({"Retry-After": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"Retry-After": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),
        ({"Retry-After": "next tuesday"}, None),
        # What no server means is treated as absent: never a NaN, an infinity or a year to sleep.
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "NaN"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "-inf"}, None),
        ({"Retry-After": "Infinity"}, None),
        ({"Retry-After": "1e300"}, None),
        ({"Retry-After": "86401"}, None),
        ({"retry-after-ms": "nan", "Retry-After": "3"}, 3.0),
        ({"retry-after-ms": "inf"}, None),
    ],
)
def test_retry_after_seconds(headers, expected):
    assert retry_after_seconds(headers, now=NOW) == expected


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (0, 0.0, 0.5),
        (0, 1.0, 0.375),
        (1, 0.0, 1.0),
        (2, 0.0, 2.0),
        (3, 0.0, 4.0),
        (4, 0.0, 8.0),
        (10, 0.0, 8.0),
        (10, 1.0, 6.0),
    ],
)
def test_backoff_doubles_with_jitter_and_cap(attempt, rand, expected):
    assert retry_delay(attempt, RetryPolicy(), rand=lambda: rand) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"Retry-After": "7"}, 7.0), ({"Retry-After": "3600"}, 60.0), ({"Retry-After": "0"}, 0.0)],
)
def test_server_requested_wait_wins_up_to_the_cap(headers, expected):
    assert retry_delay(0, RetryPolicy(), headers=headers, rand=lambda: 0.5) == expected


def test_custom_policy_values_apply():
    policy = RetryPolicy(initial_delay=0.1, max_delay=0.3, max_retry_after=5, jitter=0)
    assert [retry_delay(n, policy) for n in range(4)] == [0.1, 0.2, 0.3, 0.3]
    assert retry_delay(0, policy, headers={"Retry-After": "10"}) == 5


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "Infinity"])
def test_a_meaningless_retry_after_falls_back_to_backoff(value):
    delay = retry_delay(0, RetryPolicy(), headers={"Retry-After": value}, rand=lambda: 0.0)
    assert delay == RetryPolicy().initial_delay
