"""The sign-in page's two additions to Gradio's: the client's address for the sign-in limits,
and the sentence of a paused sign-in shown on the form.

Gradio's `auth` callable gets only a name and a password, and its sign-in form says nothing
when the answer is neither 200 nor 400. `SignInPage`, an ASGI middleware, remembers each
request's client address (`client_address`) and adds `SIGN_IN_SCRIPT` to the page's HTML,
which shows a 429's sentence ("try again in 12 minutes") above the form.
"""

from __future__ import annotations

import contextvars
from typing import Any

client_address: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "client_address", default=None
)

SIGN_IN_SCRIPT = """<script>
(() => {
  const fetch0 = window.fetch;
  window.fetch = async (...args) => {
    const response = await fetch0(...args);
    const url = String(args[0] && args[0].url ? args[0].url : args[0]);
    if (response.status === 429 && /\\/login\\/?$/.test(url)) {
      const detail = (await response.clone().json()).detail;
      let note = document.getElementById("sign-in-refused");
      if (!note) {
        note = document.createElement("div");
        note.id = "sign-in-refused";
        note.setAttribute("role", "alert");
        note.style.cssText = "padding:12px;margin:12px auto;max-width:480px;" +
          "border:1px solid #c33;border-radius:6px;color:#c33;text-align:center";
        document.body.prepend(note);
      }
      note.textContent = detail;
    }
    return response;
  };
})();
</script>"""


class SignInPage:
    """ASGI middleware: the client's address while a request is handled, and the script in
    the app's page (the HTML of its root path)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        token = client_address.set(client[0] if client else None)
        try:
            page = scope["method"] == "GET" and scope["path"].rstrip("/") == scope.get(
                "root_path", ""
            ).rstrip("/")
            await self.app(scope, receive, with_script(send) if page else send)
        finally:
            client_address.reset(token)


def with_script(send: Any) -> Any:
    """`send`, but an HTML answer gets `SIGN_IN_SCRIPT` before its </head> (held whole until
    its last chunk, so its length can be set right)."""
    start: dict[str, Any] = {}
    body: list[bytes] = []

    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            if not headers.get(b"content-type", b"").startswith(b"text/html"):
                await send(message)
                return
            start.update(message)
            return
        if not start or message["type"] != "http.response.body":
            await send(message)
            return
        body.append(message.get("body", b""))
        if message.get("more_body"):
            return
        html = b"".join(body).replace(b"</head>", SIGN_IN_SCRIPT.encode() + b"</head>", 1)
        headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(html)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": html})

    return sending
