"""benchmarks/wrk.py: wrk's report parsed from real output (captured from
wrk 4.1.0 here), the generated Lua script, and one short real run."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks import wrk

PLAIN = """\
Running 2s test @ http://127.0.0.1:18555/index.html
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.15ms    1.49ms  24.83ms   88.89%
    Req/Sec     1.27k   108.96     1.43k    90.48%
  Latency Distribution
     50%    2.92ms
     75%    3.60ms
     90%    4.31ms
     99%    8.48ms
  2647 requests in 2.10s, 491.14KB read
Requests/sec:   1260.09
Transfer/sec:    233.81KB
"""

NON_2XX = """\
Running 2s test @ http://127.0.0.1:18555/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.41ms    1.90ms  28.08ms   82.34%
    Req/Sec     1.17k   135.17     1.39k    80.95%
  Latency Distribution
     50%    2.99ms
     75%    4.15ms
     90%    5.54ms
     99%    8.62ms
  2442 requests in 2.10s, 233.60MB read
  Non-2xx or 3xx responses: 814
Requests/sec:   1163.97
Transfer/sec:    111.34MB
"""

# Every response came after --timeout: wrk prints zero latencies.
ALL_TIMEOUTS = """\
Running 3s test @ http://127.0.0.1:18556/?s=1.2
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     3.00      0.00     3.00    100.00%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  8 requests in 3.00s, 1.66KB read
  Socket errors: connect 0, read 0, write 0, timeout 8
Requests/sec:      2.66
Transfer/sec:     567.25B
"""

# Latencies in seconds are printed with a trailing blank.
SECONDS = """\
Running 4s test @ http://127.0.0.1:18556/?s=1.1
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.13s    21.21ms   1.14s    66.67%
    Req/Sec     3.00      4.69    10.00     75.00%
  Latency Distribution
     50%    1.14s 
     75%    1.14s 
     90%    1.14s 
     99%    1.14s 
  6 requests in 4.01s, 1.25KB read
Requests/sec:      1.50
Transfer/sec:     318.90B
"""

READ_ERRORS = """\
Running 2s test @ http://127.0.0.1:18556/drop
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    30.72ms   20.02ms  49.46ms   68.90%
    Req/Sec   127.20     33.61   210.00     70.00%
  Latency Distribution
     50%   43.85ms
     75%   44.01ms
     90%   45.00ms
     99%   48.06ms
  254 requests in 2.00s, 53.28KB read
  Socket errors: connect 0, read 103, write 0, timeout 0
Requests/sec:    126.85
Transfer/sec:     26.61KB"""


def test_plain_report() -> None:
    out = wrk.parse_output(PLAIN)
    assert out.requests == 2647
    assert out.duration_s == pytest.approx(2.10)
    assert out.requests_per_s == pytest.approx(1260.09)
    assert out.transfer_bytes_per_s == pytest.approx(233.81 * 1024)
    assert out.latency_ms == ((50, 2.92), (75, 3.60), (90, 4.31), (99, 8.48))
    assert out.percentile(99) == pytest.approx(8.48)
    assert out.errors == 0


def test_non_2xx_responses_count_as_errors() -> None:
    out = wrk.parse_output(NON_2XX)
    assert out.non_2xx_3xx == 814
    assert out.errors == 814
    assert out.transfer_bytes_per_s == pytest.approx(111.34 * 1024**2)


def test_all_timeouts_means_no_latency_not_zero_latency() -> None:
    out = wrk.parse_output(ALL_TIMEOUTS)
    assert out.errors_timeout == 8
    assert out.latency_ms == ()
    assert out.percentile(50) is None
    assert out.transfer_bytes_per_s == pytest.approx(567.25)


def test_latencies_in_seconds() -> None:
    out = wrk.parse_output(SECONDS)
    assert out.percentile(50) == pytest.approx(1140.0)
    assert out.requests_per_s == pytest.approx(1.5)
    assert out.duration_s == pytest.approx(4.01)


def test_socket_errors_without_trailing_newline() -> None:
    out = wrk.parse_output(READ_ERRORS)
    assert (out.errors_connect, out.errors_read, out.errors_write, out.errors_timeout) == (0, 103, 0, 0)
    assert out.errors == 103
    assert out.transfer_bytes_per_s == pytest.approx(26.61 * 1024)


def test_not_a_report() -> None:
    with pytest.raises(ValueError):
        wrk.parse_output("unable to connect to 127.0.0.1:18555 Connection refused\n")


@pytest.mark.parametrize(("text", "ms"), [("611.86us", 0.61186), ("8.48ms", 8.48), ("1.14s", 1140.0),
                                          ("2.00m", 120_000.0)])
def test_time_units(text: str, ms: float) -> None:
    assert wrk.parse_time_ms(text) == pytest.approx(ms)


def test_byte_and_count_units() -> None:
    assert wrk.parse_bytes("1.00GB") == 1024**3
    assert wrk.parse_metric("1.27k") == pytest.approx(1270)
    with pytest.raises(ValueError):
        wrk.parse_bytes("12 apples")


def test_lua_string_escapes() -> None:
    assert wrk.lua_string('a"b\\c') == '"a\\"b\\\\c"'
    assert wrk.lua_string("x\ny") == '"x\\010y"'
    assert wrk.lua_string("é") == '"\\195\\169"'


def test_one_path_script_lets_wrk_replay_one_request() -> None:
    script = wrk.lua_script(["/ms"], [("Accept-Encoding", "gzip")])
    assert 'wrk.headers["Accept-Encoding"] = "gzip"' in script
    assert 'wrk.path = "/ms"' in script
    assert "request" not in script.split("\n", 1)[1]


def test_several_paths_round_robin() -> None:
    script = wrk.lua_script(["/a", "/@types%2fnode"])
    assert '"/@types%2fnode",' in script
    assert "request = function()" in script
    with pytest.raises(ValueError):
        wrk.lua_script([])


# --- a real run ---------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append((self.path, self.headers.get("X-Bench")))
        body = b"ok" if self.path != "/missing" else b"no"
        self.send_response(200 if self.path != "/missing" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (Debian package: wrk)")
def test_real_run_round_robin_with_headers(recorder: str) -> None:
    result = wrk.run(recorder, ["/a", "/b", "/missing"], headers=[("X-Bench", 'q"1')], connections=2, duration_s=1)
    paths = {path for path, _ in _Recorder.seen}
    assert paths == {"/a", "/b", "/missing"}
    assert {header for _, header in _Recorder.seen} == {'q"1'}
    assert result.output.requests > 0
    assert result.output.non_2xx_3xx > 0
    assert 0 < result.wrk_cpu <= 2.0
    assert result.server_cpu == 0.0  # no server pids given
    assert result.wall_s >= 1.0


def test_missing_wrk_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(wrk.WrkUnavailable):
        wrk.wrk_binary()
    assert wrk.version() is None
