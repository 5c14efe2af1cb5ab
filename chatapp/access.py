"""Who may come in. With CHATAPP_AUTH set, every route but the login form refuses an anonymous request.

Gradio's own login guards its config, queue and file routes, but still answers others anonymously
(the heartbeat, reset and cancel, the theme, the manifest), so the whole FastAPI app sits behind this
gate instead. The login is a signed session cookie (Starlette's SessionMiddleware, itsdangerous);
Gradio reads the user from it through `auth_dependency`, so `gr.Request.username` still names them.
The /v1 API keeps its own bearer key (chatapp/api.py), which refuses anonymous requests by itself.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.middleware.sessions import SessionMiddleware

OPEN_PATHS = ("/login", "/logout")  # the only routes an anonymous visitor reaches
API_PREFIX = "/v1"
SESSION_COOKIE = "chatapp_session"
SESSION_DAYS = 14
FAILED_LOGIN_DELAY_S = 1.0  # slows password guessing; a real user barely notices


@dataclass(frozen=True)
class Login:
    user: str
    password: str

    @classmethod
    def parse(cls, value: str | None) -> "Login | None":
        """CHATAPP_AUTH's "user:password", or None when unset."""
        if not value:
            return None
        user, sep, password = value.partition(":")
        if not sep or not user or not password:
            raise ValueError("CHATAPP_AUTH must look like user:password")
        return cls(user, password)

    def accepts(self, user: str, password: str) -> bool:
        # both compared in constant time, and both always compared, so timing says nothing about which was wrong
        same_user = hmac.compare_digest(user.encode(), self.user.encode())
        same_password = hmac.compare_digest(password.encode(), self.password.encode())
        return same_user and same_password


def session_secret(data_dir: Path) -> str:
    """The cookie-signing key, kept in the data folder (owner-only) so logins survive a restart."""
    return kept_secret(Path(data_dir) / "session.key")


def kept_secret(path: Path) -> str:
    """A random key made once in `path` (owner-only), the same for every later start."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as out:
            out.write(key)
        return key


def logged_in_user(request: Request) -> str | None:
    """Gradio's auth_dependency: the user of this request's session, or None."""
    return request.session.get("user")


class LoginGate:
    """ASGI middleware: requests without a logged-in session get a redirect to the login form (pages)
    or a 401 (everything else), websockets are closed; /login, /logout and /v1 pass through."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in OPEN_PATHS or path == API_PREFIX or path.startswith(API_PREFIX + "/") \
                or scope.get("session", {}).get("user"):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        request = Request(scope)
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            response = RedirectResponse("/login", status_code=303)
        else:
            body = json.dumps({"error": "login required: sign in at /login"}).encode()
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        await response(scope, receive, send)


LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;display:flex;justify-content:center;margin-top:12vh}}
form{{display:flex;flex-direction:column;gap:.6em;width:18em}}input,button{{font-size:1em;padding:.45em}}
.error{{color:#b91c1c}}</style></head><body><form method="post" action="/login">
<h2>Chat with your documents</h2>{error}
<label>User <input name="username" id="username" autocomplete="username" autofocus required></label>
<label>Password <input name="password" id="password" type="password" autocomplete="current-password" required></label>
<button type="submit" id="login">Sign in</button></form></body></html>"""


def login_router(login: Login) -> APIRouter:
    router = APIRouter()

    @router.get("/login", include_in_schema=False)
    async def login_form(request: Request):
        if request.session.get("user"):
            return RedirectResponse("/", status_code=303)
        return HTMLResponse(LOGIN_PAGE.format(error=""))

    @router.post("/login", include_in_schema=False)
    async def login_submit(request: Request):
        form = await request.form()
        user, password = str(form.get("username", "")), str(form.get("password", ""))
        if not login.accepts(user, password):
            await asyncio.sleep(FAILED_LOGIN_DELAY_S)
            page = LOGIN_PAGE.format(error='<p class="error" id="login-error">Wrong user name or password.</p>')
            return HTMLResponse(page, status_code=401)
        request.session.clear()
        request.session["user"] = login.user
        return RedirectResponse("/", status_code=303)

    @router.api_route("/logout", methods=["GET", "POST"], include_in_schema=False)
    async def logout(request: Request):
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    return router


def guard(server: FastAPI, login: Login, data_dir: Path) -> None:
    """Put the whole app behind the login. Call before the server starts; the session middleware is
    added last so it runs first and the gate can read the session."""
    server.add_middleware(LoginGate)
    server.add_middleware(SessionMiddleware, secret_key=session_secret(data_dir), session_cookie=SESSION_COOKIE,
                          max_age=SESSION_DAYS * 86400, same_site="strict", https_only=False)



class OutsideDataFolder(ValueError):
    """A path typed into the page that points outside the data folder."""


def inside_data_folder(value: str | Path, data_dir: Path) -> Path:
    """`value` resolved (symlinks and `..` followed) if it lies inside the data folder; otherwise one
    line that names the field's rule but never the file's content. Pages only reach server files this
    way: anyone who can open the page must not make the server read /etc/passwd or ~/.ssh."""
    folder = Path(data_dir).resolve()
    typed = Path(value).expanduser()
    # a relative path may be the one the page listed (relative to where the app runs) or one inside the folder
    candidates = [typed.resolve()] if typed.is_absolute() else [typed.resolve(), (folder / typed).resolve()]
    path = next((p for p in candidates if p.is_relative_to(folder)), None)
    if path is None:
        raise OutsideDataFolder(f"{Path(str(value)).name or value}: only files inside the data folder or uploaded "
                                "through the page can be used here")
    return path
