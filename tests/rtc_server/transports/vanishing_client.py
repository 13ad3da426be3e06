"""A client process that connects, receives a few frames, prints its session id and hangs (to be SIGKILLed)."""

from __future__ import annotations

import asyncio
import sys

from rtc_server.clients.webrtc_client import WebRTCClient


async def main(url: str) -> None:
    client = WebRTCClient(url, session_init={"type": "session_init_v2"})
    session_id = await client.connect()
    while client.frame_count < 5:
        await asyncio.sleep(0.02)
    print(session_id, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
