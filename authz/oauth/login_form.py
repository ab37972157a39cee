"""The minimal server-rendered sign-in page of ``/authorize`` and its CSRF protection.

The form posts back to ``/authorize`` with every authorize parameter as a hidden field, plus a form
token: an HMAC over the parameters, an expiry and a random value that is also set as an HttpOnly
cookie on the page that shows the form (double submit). A POST is accepted only from a browser that
loaded the form for exactly these parameters within ``FORM_LIFETIME`` seconds, and only once per shown
form (the token is single-use, remembered in the store with the client-assertion ``jti``s); a cross-site page can
neither read the token nor set the cookie, and cannot change a parameter without breaking the HMAC.
The HMAC key is derived from the AS's ACTIVE signing key, so every replica sharing the store agrees.

Every value written into the page is HTML-escaped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from html import escape

from authz.store.base import SigningKey

FORM_LIFETIME = 600
COOKIE_NAME = "scopegate_signin"


def form_key(keys: Iterable[SigningKey]) -> bytes:
    for key in keys:
        if key.status == "ACTIVE":
            return hashlib.sha256(b"scopegate sign-in form\0" + key.private_pem).digest()
    raise LookupError("no ACTIVE signing key")


def new_browser_nonce() -> str:
    return secrets.token_urlsafe(18)


def _mac(key: bytes, params: Mapping[str, str], browser_nonce: str, exp: int, salt: str) -> str:
    canonical = json.dumps(sorted(params.items()), separators=(",", ":"))
    digest = hmac.new(key, f"{exp}\n{salt}\n{browser_nonce}\n{canonical}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_form_token(key: bytes, params: Mapping[str, str], browser_nonce: str, now: float) -> str:
    """``exp.salt.mac``. The random salt makes every shown form's token distinct, so that a token can be
    spent once (``form_token_id``) without spending the one the next form shows in the same second."""
    exp = int(now) + FORM_LIFETIME
    salt = secrets.token_urlsafe(12)
    return f"{exp}.{salt}.{_mac(key, params, browser_nonce, exp, salt)}"


def check_form_token(key: bytes, token: str, params: Mapping[str, str], browser_nonce: str | None, now: float) -> bool:
    if not browser_nonce:
        return False
    exp_text, salt, mac = form_token_parts(token)
    if not exp_text.isdigit() or int(exp_text) < now or not salt:
        return False
    return hmac.compare_digest(mac, _mac(key, params, browser_nonce, int(exp_text), salt))


def form_token_parts(token: str) -> tuple[str, str, str]:
    exp_text, _, rest = token[:256].partition(".")
    salt, _, mac = rest.partition(".")
    return exp_text, salt, mac


def form_token_id(token: str) -> tuple[str, float]:
    """The single-use key of a checked form token and until when it must be remembered (its expiry).

    Issue 8 item 5: a form POST could be replayed for as long as the token lived, each replay costing a
    scrypt; now the token is spent when the POST is read, whatever its outcome, and a replay is refused."""
    exp_text, _, mac = form_token_parts(token)
    return f"sign-in-form:{mac}", float(exp_text)


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}"
          "label{display:block;margin-top:1rem}input{width:100%;padding:.4rem;box-sizing:border-box}"
          "button{margin-top:1.5rem;padding:.5rem 1.5rem}.error{color:#b00020}")


def render_login(*, action: str, server_name: str, client_name: str, params: Mapping[str, str], form_token: str,
                 error: str | None = None, login_hint: str = "") -> str:
    hidden = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in params.items())
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>Sign in - {escape(server_name)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Sign in</h1><p>to continue to <strong>{escape(client_name)}</strong></p>{message}"
        f'<form method="post" action="{escape(action)}" autocomplete="on">{hidden}'
        f'<input type="hidden" name="form_token" value="{escape(form_token)}">'
        f'<label for="username">Username</label><input id="username" name="username" value="{escape(login_hint)}" '
        'autocomplete="username" required autofocus>'
        '<label for="password">Password</label><input id="password" name="password" type="password" '
        'autocomplete="current-password" required>'
        '<button type="submit">Sign in</button></form></body></html>'
    )


def render_error_page(error: str, description: str) -> str:
    """Spec §2.3: an invalid client_id or redirect_uri 'cannot be redirected and gets an error page'."""
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Error</title>"
        f"<style>{_STYLE}</style></head><body><h1>Sign-in error</h1>"
        f'<p class="error" id="error-code">{escape(error)}</p><p id="error-description">{escape(description)}</p>'
        "</body></html>"
    )


__all__ = ["COOKIE_NAME", "FORM_LIFETIME", "check_form_token", "form_key", "form_token_id", "make_form_token",
           "new_browser_nonce", "render_error_page", "render_login"]
