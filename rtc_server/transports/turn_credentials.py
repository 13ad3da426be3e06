"""Short-lived TURN credentials, in the TURN REST scheme coturn checks with ``use-auth-secret``.

The username is ``<unix expiry>:<id>`` and the credential is base64(HMAC-SHA1(secret, username)):
coturn recomputes the HMAC from its ``static-auth-secret`` and refuses expired usernames, so a
credential a browser leaks stops working on its own and the secret itself never leaves the server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rtc_server.config import TurnConfig, WebRTCConfig

__all__ = ["IceServerList", "TurnCredentials", "TurnSetupError", "turn_credential"]

STATIC_LIST_TTL_S = 24 * 3600  # what /v1/webrtc/ice-servers says of a list with no expiring credentials


class TurnSetupError(ValueError):
    """The TURN section cannot be used as configured (its secret variable is unset or empty)."""


def turn_credential(secret: bytes, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)): the password coturn expects for ``username``."""
    return base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode("ascii")


@dataclass(frozen=True)
class TurnCredentials:
    """One issued username/credential pair and when it stops working (unix seconds)."""

    username: str
    credential: str
    expires_at: int


class IceServerList:
    """The ICE server lists of one server: the browsers' one and its own, with fresh TURN credentials."""

    def __init__(
        self,
        config: WebRTCConfig,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        env = os.environ if environ is None else environ
        self._turn: TurnConfig | None = config.turn
        self._secret = b""
        if self._turn is not None:
            value = env.get(self._turn.secret_env, "")
            if not value:
                raise TurnSetupError(
                    f"webrtc.turn.secret_env: environment variable {self._turn.secret_env} is not set "
                    "(it must hold the TURN server's static-auth-secret)"
                )
            self._secret = value.encode()
        self._client_static = list(config.client_ice_servers if config.client_ice_servers is not None else config.ice_servers)
        self._server_static = list(config.ice_servers)
        self._clock = clock

    @property
    def ttl_seconds(self) -> int:
        """How long the credentials handed out now stay valid."""
        return self._turn.ttl_seconds if self._turn is not None else STATIC_LIST_TTL_S

    def issue(self) -> TurnCredentials:
        """Fresh credentials for the configured TURN server; raises when there is none."""
        if self._turn is None:
            raise TurnSetupError("no webrtc.turn section")
        expires_at = int(self._clock()) + self._turn.ttl_seconds
        username = f"{expires_at}:{secrets.token_hex(8)}"
        return TurnCredentials(username, turn_credential(self._secret, username), expires_at)

    def for_clients(self) -> list[dict[str, Any]]:
        """What a browser gets: ``client_ice_servers`` and, first, the TURN server with fresh credentials."""
        return self._with_turn(self._client_static)

    def for_server(self) -> list[dict[str, Any]] | None:
        """The server's own list for one offer, or None when it never changes (no ``server_side`` TURN)."""
        if self._turn is None or not self._turn.server_side:
            return None
        # aiortc uses the first TURN server of the list: the one with credentials goes first.
        return self._with_turn(self._server_static)

    def _with_turn(self, static: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        if self._turn is None:
            return [dict(entry) for entry in static]
        issued = self.issue()
        turn = {"urls": list(self._turn.urls), "username": issued.username, "credential": issued.credential}
        return [turn, *(dict(entry) for entry in static)]
