"""What travels to a replica and back: headers, WebSocket URLs, close codes. Plain tests."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy

from rtc_server.router.bridge import sendable_close_code
from rtc_server.router.proxy import ReplicaAnswer, relay, request_headers, websocket_headers, websocket_url
from rtc_server.transports.gate import FORWARDING_HEADERS


def test_the_client_headers_travel_with_its_host_and_nothing_forwarded_is_added() -> None:
    request = make_mocked_request(
        "POST",
        "/v1/webrtc/offer",
        headers={
            "Host": "router.example:9000",
            "Origin": "http://router.example:9000",
            "Authorization": "Bearer t",
            "Content-Type": "application/json",
            "Content-Length": "12",
            "Connection": "keep-alive",
            "Keep-Alive": "timeout=5",
            "Accept-Encoding": "gzip",
        },
    )
    headers = request_headers(request)
    assert headers["Host"] == "router.example:9000" and headers["Origin"] == "http://router.example:9000"
    assert headers["Authorization"] == "Bearer t" and headers["Content-Type"] == "application/json"
    for dropped in ("Content-Length", "Connection", "Keep-Alive", "Accept-Encoding"):
        assert dropped not in headers
    # The router is a trusted hop: a replica without auth must not take it for an outside proxy.
    assert not any(name in headers for name in FORWARDING_HEADERS)


def test_a_forwarding_header_the_client_sent_is_passed_on_untouched() -> None:
    request = make_mocked_request("GET", "/v1/stream", headers={"Host": "r", "X-Forwarded-For": "203.0.113.9"})
    assert request_headers(request)["X-Forwarded-For"] == "203.0.113.9"


def test_the_websocket_handshake_headers_stay_with_the_router() -> None:
    request = make_mocked_request(
        "GET",
        "/v1/stream?token=t",
        headers={
            "Host": "r",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "abc",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Protocol": "rtcvs, bearer.t",
            "Sec-WebSocket-Extensions": "permessage-deflate",
            "Origin": "http://r",
        },
    )
    headers = websocket_headers(request)
    assert set(headers) == {"Host", "Origin"}
    assert websocket_url("http://a:8080", "/v1/stream?token=t") == "ws://a:8080/v1/stream?token=t"
    assert websocket_url("https://a", "/v1/stream") == "wss://a/v1/stream"


def test_a_replica_answer_is_relayed_with_its_status_body_and_end_to_end_headers() -> None:
    headers = CIMultiDictProxy(
        CIMultiDict(
            {
                "Content-Type": "application/json",
                "Retry-After": "5",
                "Access-Control-Allow-Origin": "http://r",
                "Transfer-Encoding": "chunked",
                "Content-Encoding": "gzip",
                "Server": "Python/3.11 aiohttp",
            }
        )
    )
    response = relay(ReplicaAnswer(status=503, headers=headers, body=b'{"error": {}}'))
    assert response.status == 503 and response.body == b'{"error": {}}'
    assert response.headers["Retry-After"] == "5" and response.headers["Access-Control-Allow-Origin"] == "http://r"
    assert "Transfer-Encoding" not in response.headers and "Content-Encoding" not in response.headers


def test_close_codes_that_a_close_frame_cannot_carry_are_replaced() -> None:
    for code in (1000, 1001, 1003, 1008, 1011, 1013, 4401, 4429):
        assert sendable_close_code(code, 1000) == code
    for unsendable in (1005, 1006, 1015, 999, 5000, None):
        assert sendable_close_code(unsendable, 1001) == 1001
