"""Prometheus text exposition (0.0.4): exact rendering, and a real HTTP scrape on 127.0.0.1."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest

from recorderd.metrics import Metric, MetricsServer, render


def daemon_metrics() -> list[Metric]:
    """The figures the daemon exposes, with made-up values."""
    return [
        Metric("recorderd_active_calls", "Calls being recorded now.", "gauge", [({}, 3)]),
        Metric("recorderd_calls_total", "Calls seen since start.", "counter", [({}, 1207)]),
        Metric("recorderd_packets_total", "Packets captured, by interface.", "counter",
               [({"interface": "eth1"}, 9_000_000), ({"interface": "eth2"}, 12)]),
        Metric("recorderd_kernel_drops_total", "Packets the kernel dropped.", "counter",
               [({"interface": "eth1"}, 0)]),
        Metric("recorderd_parse_errors_total", "Packets that failed to parse, by reason.", "counter",
               [({"reason": "sip.no_start_line"}, 4), ({"reason": "ipv4.truncated"}, 1)]),
        Metric("recorderd_disk_free_bytes", "Free bytes on the vault's file system.", "gauge",
               [({}, 52_428_800_000)]),
        Metric("recorderd_oldest_unfinalised_call_seconds", "Age of the oldest open recording.",
               "gauge", [({}, 183.25)]),
    ]


def test_render_is_exact() -> None:
    assert render(daemon_metrics()) == (
        "# HELP recorderd_active_calls Calls being recorded now.\n"
        "# TYPE recorderd_active_calls gauge\n"
        "recorderd_active_calls 3\n"
        "# HELP recorderd_calls_total Calls seen since start.\n"
        "# TYPE recorderd_calls_total counter\n"
        "recorderd_calls_total 1207\n"
        "# HELP recorderd_packets_total Packets captured, by interface.\n"
        "# TYPE recorderd_packets_total counter\n"
        'recorderd_packets_total{interface="eth1"} 9000000\n'
        'recorderd_packets_total{interface="eth2"} 12\n'
        "# HELP recorderd_kernel_drops_total Packets the kernel dropped.\n"
        "# TYPE recorderd_kernel_drops_total counter\n"
        'recorderd_kernel_drops_total{interface="eth1"} 0\n'
        "# HELP recorderd_parse_errors_total Packets that failed to parse, by reason.\n"
        "# TYPE recorderd_parse_errors_total counter\n"
        'recorderd_parse_errors_total{reason="sip.no_start_line"} 4\n'
        'recorderd_parse_errors_total{reason="ipv4.truncated"} 1\n'
        "# HELP recorderd_disk_free_bytes Free bytes on the vault's file system.\n"
        "# TYPE recorderd_disk_free_bytes gauge\n"
        "recorderd_disk_free_bytes 52428800000\n"
        "# HELP recorderd_oldest_unfinalised_call_seconds Age of the oldest open recording.\n"
        "# TYPE recorderd_oldest_unfinalised_call_seconds gauge\n"
        "recorderd_oldest_unfinalised_call_seconds 183.25\n"
    )


def test_escaping_and_special_values() -> None:
    text = render([
        Metric("x_info", 'help with \\ backslash\nand "quotes"', "gauge", [
            ({"path": 'C:\\vault\n"q"', "b": "plain"}, 1.5),
            ({"v": "nan"}, float("nan")),
            ({"v": "inf"}, float("inf")),
            ({"v": "-inf"}, float("-inf")),
            ({"v": "big"}, 1e20),
        ]),
        Metric("empty_total", "No samples yet.", "counter"),
    ])
    assert text == (
        '# HELP x_info help with \\\\ backslash\\nand "quotes"\n'  # HELP escapes \ and newline only
        "# TYPE x_info gauge\n"
        'x_info{path="C:\\\\vault\\n\\"q\\"",b="plain"} 1.5\n'
        'x_info{v="nan"} NaN\n'
        'x_info{v="inf"} +Inf\n'
        'x_info{v="-inf"} -Inf\n'
        'x_info{v="big"} 1e+20\n'
        "# HELP empty_total No samples yet.\n"
        "# TYPE empty_total counter\n"
    )


@pytest.mark.parametrize(("args", "match"), [
    (("bad-name", "h", "gauge", []), "invalid metric name"),
    (("ok", "h", "histogram", []), "counter or gauge"),
    (("ok", "h", "gauge", [({"bad-label": "v"}, 1)]), "invalid label name"),
    (("ok", "h", "gauge", [({"__reserved": "v"}, 1)]), "invalid label name"),
])
def test_invalid_metrics_are_refused(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Metric(*args)


def test_a_name_may_appear_only_once() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        render([Metric("a", "h", "gauge"), Metric("a", "h", "gauge")])


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    scrapes = {"n": 0}

    def collect() -> list[Metric]:
        scrapes["n"] += 1
        return [*daemon_metrics(), Metric("scrapes_total", "Scrapes so far.", "counter", [({}, scrapes["n"])])]

    srv = MetricsServer("127.0.0.1", 0, collect)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _request(port: int, method: str, path: str) -> tuple[int, str | None, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read().decode()
    finally:
        conn.close()


def test_get_metrics_over_http(server: MetricsServer) -> None:
    assert server.port != 0  # port 0: the kernel chose one
    status, content_type, body = _request(server.port, "GET", "/metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert body == render(daemon_metrics()) + (
        "# HELP scrapes_total Scrapes so far.\n# TYPE scrapes_total counter\nscrapes_total 1\n")
    # collected afresh on every scrape
    assert _request(server.port, "GET", "/metrics")[2].endswith("scrapes_total 2\n")


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "/", 404),
    ("GET", "/metrics/extra", 404),
    ("GET", "/favicon.ico", 404),
    ("POST", "/metrics", 405),
    ("DELETE", "/metrics", 405),
])
def test_only_get_metrics_is_served(server: MetricsServer, method: str, path: str, expected: int) -> None:
    assert _request(server.port, method, path)[0] == expected


def test_a_failing_collector_is_a_500_and_the_server_keeps_serving() -> None:
    calls = {"n": 0}

    def flaky() -> list[Metric]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("catalog locked")
        return [Metric("up", "Up.", "gauge", [({}, 1)])]

    srv = MetricsServer("127.0.0.1", 0, flaky)
    srv.start()
    port = srv.port
    try:
        assert _request(port, "GET", "/metrics")[0] == 500
        assert _request(port, "GET", "/metrics")[2] == "# HELP up Up.\n# TYPE up gauge\nup 1\n"
    finally:
        srv.stop()
    with pytest.raises(ConnectionRefusedError):  # stop() closed the listening socket
        _request(port, "GET", "/metrics")


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_ipv6_loopback(host: str) -> None:
    srv = MetricsServer(host, 0, lambda: [Metric("up", "Up.", "gauge", [({}, 1)])])
    srv.start()
    try:
        conn = http.client.HTTPConnection("::1", srv.port, timeout=5)
        conn.request("GET", "/metrics")
        assert conn.getresponse().read() == b"# HELP up Up.\n# TYPE up gauge\nup 1\n"
        conn.close()
    finally:
        srv.stop()
