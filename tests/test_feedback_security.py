"""The feedback server is safe to share: no open non-loopback bind, a token on every call (Bearer for the API, a
?token= login cookie for the page), CSRF checks on the page's form posts, a body limit enforced before the body
is read, and bad Unicode answered 400. All against a real uvicorn server on 127.0.0.1."""

import http.client
import json
import re
import socket
from contextlib import contextmanager
from http.cookiejar import CookieJar
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, HTTPRedirectHandler, Request, build_opener

import pytest

from rewardhub.cli.main import main
from rewardhub.errors import ConfigError
from rewardhub.http_server import AppThread
from rewardhub_feedback import FeedbackStore
from rewardhub_feedback.security import SESSION_COOKIE, check_bind, check_token, is_loopback
from rewardhub_feedback.server import create_app

TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "feedback.db") as s:
        s.enqueue("What is 6*7?", ["42"])
        yield s


@contextmanager
def serving(store, **kw):
    with AppThread(create_app(store, **kw)) as thread:
        yield thread.url


class NoRedirect(HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Client:
    """A browser-ish client: keeps cookies; ``follow=False`` shows redirects instead of following them."""

    def __init__(self, follow=True):
        self.jar = CookieJar()
        handlers = [HTTPCookieProcessor(self.jar)] + ([] if follow else [NoRedirect()])
        self.opener = build_opener(*handlers)
        self.csrf = ""

    def __call__(self, method, url, body=None, form=None, headers=None, raw=None):
        head = dict(headers or {})
        data = raw
        if body is not None:
            data, head["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif form is not None:
            data, head["Content-Type"] = urlencode(form).encode(), "application/x-www-form-urlencoded"
        elif raw is not None:
            head.setdefault("Content-Type", "application/json")
        try:
            with self.opener.open(Request(url, data=data, method=method, headers=head), timeout=10) as resp:
                status, text, resp_headers = resp.status, resp.read().decode(), resp.headers
        except HTTPError as exc:
            status, text, resp_headers = exc.code, exc.read().decode(), exc.headers
        if found := re.search(r'name="csrf" value="([^"]+)"', text):
            self.csrf = found.group(1)
        return status, text, resp_headers


# --------------------------------------------------------------------------------------------------------
# binding and the token
# --------------------------------------------------------------------------------------------------------

def test_only_loopback_may_be_served_without_a_token(tmp_path, capsys):
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(ConfigError, match="REWARDHUB_FEEDBACK_TOKEN"):
            check_bind(host, None)
        check_bind(host, TOKEN)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        check_token("short")
    db = tmp_path / "never.db"
    assert main(["feedback", "serve", "--host", "0.0.0.0", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve the feedback store on 0.0.0.0 without a token" in err and "--token" in err
    assert not db.exists()                                  # refused before a store was created


def test_a_token_is_checked_on_every_api_call_and_on_the_page(store):
    with serving(store, token=TOKEN) as url:
        c = Client(follow=False)
        code, text, _ = c("GET", f"{url}/api/stats")
        assert code == 401 and "Authorization: Bearer" in json.loads(text)["detail"]
        assert c("GET", f"{url}/api/stats", headers={"Authorization": "Bearer wrong-token-wrong-token"})[0] == 401
        assert c("GET", f"{url}/api/stats", headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert c("GET", f"{url}/api/stats", headers=bearer)[0] == 200
        assert c("POST", f"{url}/api/ratings", {"prompt": "p", "completion": "a", "score": 3}, headers=bearer)[0] == 201
        assert c("GET", f"{url}/openapi.json")[0] == 401          # every route, not only /api
        code, page, _ = c("GET", f"{url}/?annotator=ann")
        assert code == 401 and 'action="/login"' in page and "What is 6*7?" not in page
        assert c("GET", f"{url}/?token=not-the-token-at-all")[0] == 401

        code, _, headers = c("GET", f"{url}/?token={TOKEN}&annotator=ann")   # the login link
        assert code == 303 and headers["location"] == "/?annotator=ann"      # the token leaves the address bar
        cookie = headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert TOKEN not in cookie
        code, page, _ = c("GET", f"{url}/?annotator=ann")
        assert code == 200 and "What is 6*7?" in page
        item = store.next_open("ann").id
        code, _, _ = c("POST", f"{url}/label", form={"item": item, "annotator": "ann", "score": "4", "csrf": c.csrf})
        assert code == 303 and store.rating("What is 6*7?", "42") == (4.0, 1)
        code, _, _ = c("POST", f"{url}/api/ratings", {"prompt": "p", "completion": "b", "score": 3})
        assert code == 401                      # the page's cookie does not open the JSON API's writes
        assert c("GET", f"{url}/api/stats")[0] == 200                      # but does its reads

        other = Client(follow=False)                                       # the login form
        code, _, headers = other("POST", f"{url}/login", form={"token": TOKEN, "annotator": "bob"})
        assert code == 303 and SESSION_COOKIE in headers["set-cookie"]
        assert other("GET", f"{url}/?annotator=bob")[0] == 200
        assert Client()("POST", f"{url}/login", form={"token": "x" * 20})[0] == 401
        forged = Client(follow=False)
        forged.jar.set_cookie(next(iter(c.jar)))                           # a copied cookie works (it is the secret)...
        assert forged("GET", f"{url}/")[0] == 200
        tampered = next(iter(c.jar))
        tampered.value = tampered.value[:-2] + ("00" if not tampered.value.endswith("00") else "11")
        evil = Client(follow=False)
        evil.jar.set_cookie(tampered)
        assert evil("GET", f"{url}/")[0] == 401                           # ...an altered one does not


# --------------------------------------------------------------------------------------------------------
# CSRF and DNS rebinding
# --------------------------------------------------------------------------------------------------------

def test_form_posts_need_the_sessions_csrf_token_and_a_same_origin(store):
    item = store.next_open("ann").id
    with serving(store) as url:                                            # open loopback server: CSRF still matters
        c = Client(follow=False)
        code, _, headers = c("GET", f"{url}/?annotator=ann")
        assert code == 200 and "HttpOnly" in headers["set-cookie"] and c.csrf
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        form = {"item": item, "annotator": "ann", "score": "2"}
        assert c("POST", f"{url}/label", form=form)[0] == 403                       # no token
        assert c("POST", f"{url}/label", form={**form, "csrf": "0" * 64})[0] == 403  # a wrong one
        stranger = Client(follow=False)
        stranger("GET", f"{url}/")
        assert stranger("POST", f"{url}/label", form={**form, "csrf": c.csrf})[0] == 403  # another session's
        assert Client()("POST", f"{url}/label", form={**form, "csrf": c.csrf})[0] == 403  # no session at all
        evil = {"Origin": "http://evil.example"}
        assert c("POST", f"{url}/label", form={**form, "csrf": c.csrf}, headers=evil)[0] == 403
        assert c("POST", f"{url}/label", form={**form, "csrf": c.csrf}, headers={"Origin": "null"})[0] == 403
        code, _, _ = c("POST", f"{url}/label", form={**form, "csrf": c.csrf},
                       headers={"Referer": "http://evil.example/page"})
        assert code == 403
        assert store.rating("What is 6*7?", "42") is None                 # nothing was stored by any of them
        code, _, _ = c("POST", f"{url}/label", form={**form, "csrf": c.csrf}, headers={"Origin": url})
        assert code == 303 and store.rating("What is 6*7?", "42") == (2.0, 1)
        code, text, _ = c("POST", f"{url}/api/ratings", {"prompt": "p", "completion": "a", "score": 3}, headers=evil)
        assert code == 403 and "cross-origin" in text                     # the JSON API refuses foreign origins too
        code, _, _ = c("POST", f"{url}/api/ratings", raw=b'{"prompt": "p", "completion": "a", "score": 3}',
                       headers={"Content-Type": "text/plain"})            # what a foreign form could send
        assert code == 422 and store.rating("p", "a") is None


def test_an_open_server_answers_only_loopback_host_names(store):
    with serving(store) as url:
        port = url.rsplit(":", 1)[1]
        code, text, _ = Client()("GET", f"{url}/api/stats", headers={"Host": f"rebound.example:{port}"})
        assert code == 403 and "loopback" in text
        assert Client()("GET", f"{url}/api/stats", headers={"Host": f"localhost:{port}"})[0] == 200
    with serving(store, token=TOKEN) as url:                # with a token any name may be used
        code, _, _ = Client()("GET", f"{url}/api/stats", headers={"Host": "labels.example.org",
                                                                  "Authorization": f"Bearer {TOKEN}"})
        assert code == 200


# --------------------------------------------------------------------------------------------------------
# body size and bad Unicode
# --------------------------------------------------------------------------------------------------------

def test_bodies_over_the_limit_are_refused_before_they_are_read(store):
    with serving(store, max_body_kb=1) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:   # a huge body announced, none sent
            sock.sendall(f"POST /api/ratings HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: 50000000\r\n\r\n".encode())
            answer = b""
            while b"at most" not in answer and (chunk := sock.recv(65536)):   # headers and body may come apart
                answer += chunk
            answer = answer.decode()
        assert answer.startswith("HTTP/1.1 413") and "at most 1024 bytes" in answer

        conn = http.client.HTTPConnection(host, int(port), timeout=10)   # chunked: no Content-Length to trust
        conn.request("POST", "/api/ratings", body=(b"x" * 300 for _ in range(10)),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413 and "more than 1024 bytes arrived" in resp.read().decode()
        conn.close()

        c = Client()
        code, _, _ = c("POST", f"{url}/api/ratings", {"prompt": "p", "completion": "a" * 2000, "score": 3})
        assert code == 413
        assert c("POST", f"{url}/api/ratings", {"prompt": "p", "completion": "a" * 500, "score": 3})[0] == 201
        c("GET", f"{url}/")
        code, page, _ = c("POST", f"{url}/label", form={"item": 1, "annotator": "x" * 2000, "score": "3",
                                                        "csrf": c.csrf})
        assert code == 413 and "--max-body-kb" in page
    with pytest.raises(Exception, match="max_body_kb must be > 0"):
        create_app(store, max_body_kb=0)


def test_bad_unicode_is_a_400_with_a_message_never_a_500(store):
    with serving(store) as url:
        c = Client()
        cases = [
            (b'{"prompt": "\\ud800", "completion": "a", "score": 3}', "`prompt` holds a lone surrogate"),
            (b'{"prompt": "p", "completion": "a\\udfff", "score": 3}', "`completion` holds a lone surrogate"),
            (b'{"prompt": "p", "completion": "a", "score": 3, "annotator": "\\udc80"}', "`annotator` holds"),
            (b'{"prompt": "p", "completion": "a", "score": 3, "metadata": {"\\ud800": 1}}', "`metadata` holds"),
            (b'{"prompt": "p\xff\xfe", "completion": "a", "score": 3}', "not valid UTF-8 (byte 0xff at offset 13"),
        ]
        for body, message in cases:
            code, text, _ = c("POST", f"{url}/api/ratings", raw=body)
            assert code == 400 and message in json.loads(text)["detail"], (body, text)
        code, text, _ = c("POST", f"{url}/api/comparisons",
                          raw=b'{"prompt": [{"role": "user", "content": "\\ud83d"}], "chosen": "a", "rejected": "b"}')
        assert code == 400 and "lone surrogate" in text
        code, text, _ = c("POST", f"{url}/api/queue", raw=b'{"prompt": "p", "completions": ["\\ud800"]}')
        assert code == 400 and "lone surrogate" in text
        code, text, _ = c("POST", f"{url}/api/ratings", raw='{"prompt": "p \\ud83d\\ude00", "completion": "😀", '
                          '"score": 3}'.encode())                         # a proper pair is fine
        assert code == 201 and store.rating("p \U0001F600", "😀") == (3.0, 1)
        c("GET", f"{url}/")
        code, text, _ = c("POST", f"{url}/label", raw=b"item=1&annotator=\xff&score=3&csrf=" + c.csrf.encode(),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert code == 400 and "not valid UTF-8" in text
        code, text, _ = c("POST", f"{url}/label", raw=b"item=1&annotator=%ff&score=3&csrf=" + c.csrf.encode(),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert code == 400 and "Unicode" in text
        assert c("GET", f"{url}/?annotator=%ed%a0%80")[0] == 200          # an odd query string is no 500 either
        stats = json.loads(c("GET", f"{url}/api/stats")[1])
        assert (stats["ratings"], stats["queue_open"]) == (1, 1)          # only the good rating was stored
