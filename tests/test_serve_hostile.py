"""Issue 25 (items 5, 7 and 9's --host): `slimtune serve` against hostile ports, hosts and bodies.

A bad port is refused before the model loads; a host other than loopback is served with a warning;
a body that is too deep, not Unicode or not UTF-8 is a client error (4xx JSON), never a 500.
Every request goes to 127.0.0.1 only (a server bound to 0.0.0.0 is never sent traffic).
"""

from __future__ import annotations

import httpx
import pytest

import slimtune
from slimtune.errors import SlimtuneError
from slimtune.server import ServeConfig, bind, load, network_warning

from test_cli import assert_one_line_error
from test_serve import post, serving


@pytest.fixture(scope="module")
def clf(tiny_clf_dir):
    return load(tiny_clf_dir, ServeConfig(max_length=32))


# -- item 5: the port ----------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_05_port_out_of_range_exits_2_naming_it(port, tiny_clf_dir, slimtune_in_process):
    proc = slimtune_in_process("serve", tiny_clf_dir, "--port", port)
    assert_one_line_error(proc, f"serve: port {port} is not in 1-65535 (or 0: any free port)")


@pytest.mark.parametrize("port", [70000, 65536, -1, "8000", 8000.0, True])
def test_05_library_refuses_a_port_out_of_range(port, tmp_path):
    # the port is checked first: the missing model is never reached
    with pytest.raises(SlimtuneError, match=r"^serve: port .* is not in 1-65535 \(or 0: any free port\)$"):
        slimtune.serve(tmp_path / "nowhere", port=port)


def test_05_port_0_is_any_free_port():
    with bind("127.0.0.1", 0) as sock:
        assert 1 <= sock.getsockname()[1] <= 65535


# -- item 9: a host other than loopback ----------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_09_loopback_is_silent(host):
    assert network_warning(host, 8000) is None


@pytest.mark.parametrize("host, shown", [("0.0.0.0", "0.0.0.0:8000"), ("::", "[::]:8000"),
                                         ("192.168.1.10", "192.168.1.10:8000")])
def test_09_other_hosts_are_warned_about(host, shown):
    assert network_warning(host, 8000) == (
        f"slimtune serve: warning: listening on {shown}: the model is reachable from the network and the server "
        "has no authentication (--host 127.0.0.1 keeps it on this machine)")


def test_09_localhost_binds_loopback_and_is_silent():
    with bind("localhost", 0) as sock:
        assert network_warning(*sock.getsockname()[:2]) is None


def test_09_library_warns_on_stderr_when_it_binds_0_0_0_0_and_not_on_loopback(tmp_path, capsys):
    # bound (not listened on) for a moment: the missing model stops it before it serves
    with pytest.raises(SlimtuneError, match="model not found"):
        slimtune.serve(tmp_path / "nowhere", host="0.0.0.0", port=0)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slimtune serve: warning: listening on 0.0.0.0:"), err
    assert "reachable from the network" in lines[0] and "no authentication" in lines[0] and out == ""
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(SlimtuneError, match="model not found"):
            slimtune.serve(tmp_path / "nowhere", host=host, port=0)
        assert capsys.readouterr() == ("", "")


def test_09_command_warns_once_on_stderr(tmp_path, slimtune_in_process):
    proc = slimtune_in_process("serve", tmp_path / "nowhere", "--host", "0.0.0.0", "--port", "0")
    assert_one_line_error(proc, "model not found")
    assert sum("warning: listening on 0.0.0.0:" in line for line in proc.stderr.splitlines()) == 1, proc.stderr


# -- item 7: bodies that are client errors -------------------------------------------------------

DEEP = b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

HOSTILE = [
    ("deep-json", DEEP, 400, "JSON nested too deep"),
    ("deep-objects", b'{"texts": ["a"], "x": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}", 400, "JSON nested too deep"),
    ("lone-high-surrogate", b'{"texts": ["\\ud800"]}', 422, '"texts"[0] is not valid Unicode: a lone surrogate \\ud800 at character 0'),
    ("lone-low-surrogate", b'{"text": "ab\\udc00"}', 422, '"text" is not valid Unicode: a lone surrogate \\udc00 at character 2'),
    ("surrogate-in-second", b'{"texts": ["ok", "\\udfff!"]}', 422, '"texts"[1] is not valid Unicode'),
    ("not-utf8", b'{"texts": ["caf\xe9"]}', 400, "the body is not valid UTF-8"),
    # json.loads decodes bytes with 'surrogatepass': a UTF-8-encoded surrogate is a lone surrogate
    ("encoded-surrogate", b'{"texts": ["\xed\xa0\x80"]}', 422, '"texts"[0] is not valid Unicode'),
    ("nested-list-text", b'{"texts": [["a"]]}', 422, '"texts"[0] must be a string, not list'),
    ("null-text", b'{"texts": [null]}', 422, '"texts"[0] must be a string, not NoneType'),
    ("empty-list", b'{"texts": []}', 422, "non-empty list"),
    ("surrogate-task", b'{"text": "a", "task": "\\ud800"}', 404, "unknown task '\\ud800'"),
    ("surrogate-key", b'{"\\ud800": "a"}', 422, "unknown field(s) '\\ud800'"),
    ("huge-number", b'{"text": "a", "task": ' + b"9" * 5000 + b"}", 400, "malformed JSON"),
]


def test_07_hostile_bodies_get_4xx_json_and_the_server_stays_up(clf):
    with serving(clf) as (url, _):
        for name, body, status, expected in HOSTILE:
            r = httpx.post(url + "/predict", content=body, headers={"content-type": "application/json"}, timeout=20)
            assert r.status_code == status, (name, r.status_code, r.text[:300])
            assert set(r.json()) == {"error"} and expected in r.json()["error"], (name, r.json())
            assert len(r.json()["error"]) < 200, name  # short: no echo of the body
        assert httpx.get(url + "/health").json() == {"status": "ok"}
        ok = post(url, {"texts": ["a film \U0001F600", "", "\x00"]})  # a surrogate pair is fine, so are empty and NUL
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 3, ok.text
        metrics = httpx.get(url + "/metrics").text
    assert 'status="500"' not in metrics


def test_07_a_chunked_body_over_the_limit_is_413(clf):
    def chunks():  # no Content-Length: the limit holds while the body streams
        for _ in range(8):
            yield b" " * 1024

    with serving(clf, max_body_bytes=4096) as (url, _):
        r = httpx.post(url + "/predict", content=chunks(), headers={"content-type": "application/json"}, timeout=20)
        assert r.status_code == 413 and r.json() == {"error": "request body over 4096 bytes"}
        assert httpx.get(url + "/health").status_code == 200


@pytest.mark.parametrize("path", ["/%ff", "/%ED%A0%80", "/x%00y"])
def test_07_odd_paths_get_404_json(clf, path):
    with serving(clf) as (url, _):
        r = httpx.get(url + path, timeout=20)
    assert r.status_code == 404 and set(r.json()) == {"error"}, r.text[:300]
