"""`SSEResponse`: a text/event-stream response that writes its events straight to ASGI `send`.

What it is: the response every streamed generation returns. It sends the headers, then each event of its body as
one `http.response.body` message; the event that ends with `data: [DONE]` (nothing may follow it) is the last
message, else an empty one closes the response. One plain asyncio task per response waits for the client's
`http.disconnect` (also while no token arrives: a request still queued for a slot); a disconnect cancels the
engine requests at once (`on_close`), which ends the body's iteration, and nothing more is sent. However the
response ends (finished, client gone, error), `on_close` runs and the body is closed.

Why not Starlette's `StreamingResponse`: it runs the body and the disconnect listener in an anyio task group with
cancel scopes for every response, and converts every chunk; per streamed token that was a visible share of the
event loop's time (docs/benchmarks.md, "Serving"). The body here is bytes already framed by `server.streaming`.

What it is not: no framing or JSON (`server.streaming`), no error mapping (an error after the first byte is the
body's own last event).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

DONE_LINE = b"data: [DONE]\n\n"  # OpenAI's end of stream: nothing follows it
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class SSEResponse(Response):
    """text/event-stream whose engine requests are cancelled however the response ends (disconnect included)."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.disconnected = False
        self._on_close = on_close
        self.init_headers(SSE_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.ensure_future(self._watch(receive))
        body = self.body_iterator
        completed = False  # the last message went out (the watcher then sees uvicorn's "disconnect" too)
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            more = True
            async for event in body:
                if self.disconnected:
                    break
                more = not event.endswith(DONE_LINE)  # the stream's last event closes the response with it
                await send({"type": "http.response.body", "body": event, "more_body": more})
                if not more:
                    completed = True
                    break
            if more and not self.disconnected:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                completed = True
        except OSError:  # servers of ASGI spec 2.4 may raise on a send to a closed connection
            self.disconnected = True
        finally:
            self._on_close()
            watcher.cancel()
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        if self.background is not None and completed:
            await self.background()

    async def _watch(self, receive: Receive) -> None:
        """Until the client goes away (or the response completes, which uvicorn reports the same way)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self._on_close()  # the engine drops the requests now; the body's iteration ends
