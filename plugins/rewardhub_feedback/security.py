"""What makes the feedback server safe to share: a token, sessions for the page, CSRF checks, a body limit.

One pure-ASGI middleware, :class:`Guard`, sits in front of every route and decides from the headers alone,
before a byte of the body is read:

- **Binding.** :func:`check_bind` refuses a non-loopback address without a token (``--token`` or
  ``REWARDHUB_FEEDBACK_TOKEN``). Without a token (loopback only) the server is open to local programs, but
  the ``Host`` header must name a loopback host, so a web page on another site cannot reach it through DNS
  rebinding (its requests carry that site's name as Host).
- **The token.** When one is set it is checked on every request, with :func:`hmac.compare_digest`:
  ``Authorization: Bearer TOKEN`` (any client, any route), or, for a browser, a session cookie. A browser
  logs in once with ``/?token=TOKEN`` (a link) or the login form (``POST /login``); the server answers with an
  HttpOnly, SameSite=Strict cookie ``<session id>.<HMAC of it>`` (the token itself is never in the cookie)
  and a redirect that drops the token from the address bar. The cookie opens GET requests and the page's
  form post (``POST /label``); the JSON API's writes need the Bearer header.
- **CSRF.** A browser sends cookies with requests a foreign page makes it send, so every unsafe request
  (POST, PUT, PATCH, DELETE) with an ``Origin`` (or, lacking one, ``Referer``) of another origin is refused,
  and the page's form posts carry a synchronizer token, an HMAC of the session id, checked by the route
  (:meth:`Sessions.check_csrf`). This holds with or without a server token: on an open loopback server the
  session cookie exists for exactly this. A request with a Bearer token is not CSRF-able (a foreign page
  cannot make a browser add that header), and the JSON API only parses ``application/json`` bodies, which a
  foreign page cannot send without a CORS preflight that this server never grants.
- **Body size.** ``Content-Length`` over the limit is answered 413 at once; otherwise the body is read
  counting bytes and refused with 413 as soon as it passes the limit (a chunked upload cannot slip past).
- **Text.** A JSON or form body that is not valid UTF-8 is answered 400 naming the byte, before any route
  parses it (lone surrogates, valid JSON but not valid text, are refused by :mod:`.validation`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit

from rewardhub.errors import ConfigError

TOKEN_ENV = "REWARDHUB_FEEDBACK_TOKEN"
MIN_TOKEN = 16
DEFAULT_MAX_BODY_KB = 256
SESSION_COOKIE = "rewardhub_feedback_session"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
#: Routes a session cookie opens for unsafe methods (the page's own forms, which carry a CSRF token).
COOKIE_POSTS = {"/label"}
TOKEN_HOWTO = (f"give one with --token or the {TOKEN_ENV} environment variable (make one with "
               "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 possibly in brackets) is this machine only."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name in ("localhost", "ip6-localhost", "ip6-loopback") or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_token(token: str | None) -> str | None:
    """A usable token or None; a short one is refused (a guessable token is no protection)."""
    if token is None or token == "":
        return None
    if len(token) < MIN_TOKEN or token.strip() != token:
        raise ConfigError(f"the feedback server token must be at least {MIN_TOKEN} characters without surrounding "
                          f"spaces; {TOKEN_HOWTO}")
    return token


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if token is None and not is_loopback(host):
        raise ConfigError(f"refusing to serve the feedback store on {host} without a token: anyone who can reach "
                          f"that address could read and change the labels. {TOKEN_HOWTO[0].upper()}"
                          f"{TOKEN_HOWTO[1:]}, or listen on 127.0.0.1 (the default) for local use")


def _host_name(host_header: str) -> str:
    """The host part of a Host header (``[::1]:8765`` -> ``::1``; ``localhost:8765`` -> ``localhost``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class Sessions:
    """Signed session ids for the page and the CSRF tokens derived from them (no server-side state).

    The key is derived from the token (sessions survive a restart with the same token) or, on an open
    server, random per process.
    """

    def __init__(self, token: str | None):
        self.token = token
        self.key = (hmac.new(token.encode(), b"rewardhub feedback session key", hashlib.sha256).digest()
                    if token else secrets.token_bytes(32))

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self.key, f"{purpose}|{value}".encode(), hashlib.sha256).hexdigest()

    def new_cookie(self) -> tuple[str, str]:
        """(session id, cookie value)."""
        sid = secrets.token_urlsafe(18)
        return sid, f"{sid}.{self._sign('session', sid)}"

    def session_of(self, cookie_header: str) -> str | None:
        """The session id in a valid session cookie, else None."""
        try:
            morsel = SimpleCookie(cookie_header).get(SESSION_COOKIE)
        except Exception:  # a malformed Cookie header is simply no session
            return None
        if morsel is None or "." not in morsel.value:
            return None
        sid, sig = morsel.value.rsplit(".", 1)
        return sid if hmac.compare_digest(sig, self._sign("session", sid)) else None

    def csrf(self, sid: str) -> str:
        return self._sign("csrf", sid)

    def check_csrf(self, sid: str | None, sent: str | None) -> bool:
        return bool(sid) and isinstance(sent, str) and hmac.compare_digest(sent.encode(), self.csrf(sid).encode())

    def token_ok(self, sent: str) -> bool:
        return self.token is not None and hmac.compare_digest(sent.encode(), self.token.encode())

    @staticmethod
    def set_cookie_header(value: str, secure: bool) -> str:
        flags = "; Secure" if secure else ""
        return f"{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{flags}"


class BodyTooLarge(Exception):
    pass


class Guard:
    """The ASGI middleware described in the module docstring.

    It puts ``scope["rewardhub.auth"]`` (``"bearer"``, ``"cookie"`` or ``"open"``) and
    ``scope["rewardhub.session"]`` (the session id, or None) for the routes.
    """

    def __init__(self, app, sessions: Sessions, max_body: int):
        self.app, self.sessions, self.max_body = app, sessions, int(max_body)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        api = path.startswith("/api/")
        refusal = self._refuse(scope, headers, method, path, api)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if method in UNSAFE or "content-length" in headers or "transfer-encoding" in headers:
            try:
                body = await self._read_body(headers, receive)
            except BodyTooLarge as exc:
                await _error(413, str(exc), api)(scope, receive, send)
                return
            bad_text = _bad_utf8(headers.get("content-type", ""), body)
            if bad_text:
                await _error(400, bad_text, api)(scope, receive, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _refuse(self, scope, headers, method, path, api):
        """A response refusing the request, or None to let it through (setting the auth in the scope)."""
        sessions = self.sessions
        host = headers.get("host", "")
        if sessions.token is None and not is_loopback(_host_name(host)):
            return _error(403, f"this feedback server has no token, so it answers only requests addressed to a "
                          f"loopback host (127.0.0.1, localhost), not {host!r}. To serve other hosts, start it "
                          f"with a token ({TOKEN_ENV})", api)
        if method in UNSAFE and not _same_origin(headers, scope):
            return _error(403, "cross-origin request refused: this request came from another site's page "
                          f"(Origin/Referer {headers.get('origin') or headers.get('referer')!r})", api)
        sid = sessions.session_of(headers.get("cookie", ""))
        scope["rewardhub.session"] = sid
        if sessions.token is None:
            scope["rewardhub.auth"] = "open"  # loopback only (checked above); no token to check
            return None
        auth = headers.get("authorization", "")
        if auth:
            scheme, _, sent = auth.partition(" ")
            if scheme.lower() != "bearer" or not sessions.token_ok(sent.strip()):
                return _error(401, "wrong token in the Authorization header; send `Authorization: Bearer "
                              f"TOKEN` with the server's token ({TOKEN_ENV})", api)
            scope["rewardhub.auth"] = "bearer"
            return None
        query = (scope.get("query_string") or b"").decode("latin-1")
        if (path == "/login" and method == "POST") or (path == "/" and method == "GET" and "token=" in query):
            scope["rewardhub.auth"] = "login"  # the login route checks the token it was sent
            return None
        if sid is not None and (method not in UNSAFE or path in COOKIE_POSTS):
            scope["rewardhub.auth"] = "cookie"
            return None
        if api or method in UNSAFE:
            return _error(401, "this feedback server needs its token: send `Authorization: Bearer TOKEN` "
                          f"(the token is in {TOKEN_ENV} where the server was started)", api)
        return _login_page(401, annotator=dict(parse_qsl(query)).get("annotator", ""))

    async def _read_body(self, headers, receive) -> bytes:
        limit = self.max_body
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise BodyTooLarge(f"Content-Length {declared!r} is not a number of bytes")
            if int(declared) > limit:
                raise BodyTooLarge(_too_large(int(declared), limit))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(_too_large(size, limit, so_far=True))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _too_large(size: int, limit: int, so_far: bool = False) -> str:
    got = f"more than {limit} bytes arrived" if so_far else f"the request body is {size} bytes"
    return (f"{got}; this server takes at most {limit} bytes ({limit / 1024:g} KB) per request. Send less "
            "per request (several smaller imports or posts), or restart the server with a larger --max-body-kb")


def _same_origin(headers: dict[str, str], scope) -> bool:
    """No Origin/Referer (a non-browser client) or one naming this very server."""
    claimed = headers.get("origin") or headers.get("referer")
    if not claimed:
        return True
    if claimed == "null":
        return False
    parts = urlsplit(claimed)
    scheme = scope.get("scheme", "http")
    return parts.scheme == scheme and parts.netloc.lower() == headers.get("host", "").lower()


def _bad_utf8(content_type: str, body: bytes) -> str:
    kind = content_type.split(";", 1)[0].strip().lower()
    if not body or not (kind.endswith("json") or kind in ("application/x-www-form-urlencoded", "text/plain", "")):
        return ""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (f"the request body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start}: "
                f"{exc.reason}); send the text encoded as UTF-8")
    return ""


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _error(status: int, detail: str, api: bool):
    from starlette.responses import HTMLResponse, JSONResponse

    if api:
        return JSONResponse({"detail": detail}, status_code=status)
    from html import escape

    return HTMLResponse(f"<!doctype html><meta charset=utf-8><title>rewardhub feedback</title><p>{escape(detail)}</p>",
                        status_code=status)


def _login_page(status: int, message: str = "", annotator: str = ""):
    """The login form; it carries the annotator name of the URL it replaced through the login."""
    from html import escape

    from starlette.responses import HTMLResponse

    note = f"<p><b>{escape(message)}</b></p>" if message else ""
    keep = f'<input type="hidden" name="annotator" value="{escape(annotator)}">' if annotator else ""
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>rewardhub feedback: log in</title></head>"
        f"<body><h2>rewardhub feedback</h2>{note}<p>This labelling server needs its token (ask whoever started "
        f"it; it is in {TOKEN_ENV} there), or open the link with <code>?token=</code> they sent you.</p>"
        f'<form method="post" action="/login">{keep}<label>Token <input type="password" name="token" '
        'autocomplete="current-password" required></label> <button>Log in</button></form></body></html>',
        status_code=status)


def login_response(sessions: Sessions, sent: str, next_query: dict[str, str], secure: bool):
    """After ``?token=`` or the login form: set the session cookie and go to the page (token not in the URL)."""
    from starlette.responses import RedirectResponse

    if not sessions.token_ok(sent):
        return _login_page(401, "That token is not this server's.")
    _, cookie = sessions.new_cookie()
    query = urlencode({k: v for k, v in next_query.items() if k != "token" and v})
    response = RedirectResponse("/" + (f"?{query}" if query else ""), status_code=303)
    response.headers.append("set-cookie", sessions.set_cookie_header(cookie, secure))
    return response


def query_without_token(query_string: bytes) -> dict[str, str]:
    return {k: v for k, v in parse_qsl(query_string.decode("latin-1")) if k != "token"}
