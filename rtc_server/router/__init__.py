"""The replica router: places sessions on healthy streaming servers and relays to them (DESIGN §9).

``python -m rtc_server.router --config configs/router.yaml``. Several routers sharing one Redis act
as one: the session -> replica map is the only state they keep, and it lives there.
"""

from rtc_server.router.app import build_router_app
from rtc_server.router.config import ReplicaEndpoint, RouterConfig, load_router_config
from rtc_server.router.probe import run_health_check_loop
from rtc_server.router.registry import ProbeResult, Replica, ReplicaRegistry, ReplicaState

__all__ = [
    "ProbeResult",
    "Replica",
    "ReplicaEndpoint",
    "ReplicaRegistry",
    "ReplicaState",
    "RouterConfig",
    "build_router_app",
    "load_router_config",
    "run_health_check_loop",
]
