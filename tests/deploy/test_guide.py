"""docs/deploying.md against the code and the shipped files: its config, its figures, its paths.

The guide's figures (UDP ports, /dev/shm) are recomputed here from the code's own constants and
the shipped config, and a real worker pool's shared memory is measured against the guide's formula.
"""

from __future__ import annotations

import mmap
import re
from pathlib import Path
from typing import Any

import yaml

from gpu.subprocess_pool import SLOTS_PER_WORKER
from rtc_server.config import ServiceConfig
from rtc_server.registry import PENDING_FACTOR, Capacity
from tests.conftest import make_config
from tests.deploy.nginx_fixture import SNIPPET, snippet_directives

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "deploying.md"
SHIPPED_CONFIG = ROOT / "configs" / "ltx-video-gpu.yaml"
COTURN = ROOT / "deploy" / "coturn" / "turnserver.conf"
SYSTEMD = ROOT / "deploy" / "systemd" / "rtc-server.service"
MIB = 1024 * 1024


def guide() -> str:
    return GUIDE.read_text()


def guide_config_sections() -> dict[str, Any]:
    """The config sections the guide tells operators to set (its first yaml block)."""
    blocks = re.findall(r"```yaml\n(.*?)```", guide(), flags=re.DOTALL)
    assert blocks, "the guide has no yaml block"
    sections = yaml.safe_load(blocks[0])
    assert isinstance(sections, dict)
    return sections


def deployed_config() -> ServiceConfig:
    """configs/ltx-video-gpu.yaml with the guide's sections in place of its own, as the guide says."""
    raw = yaml.safe_load(SHIPPED_CONFIG.read_text())
    return ServiceConfig.model_validate({**raw, **guide_config_sections()})


def coturn_setting(name: str) -> str:
    (value,) = [line.split("=", 1)[1] for line in COTURN.read_text().splitlines() if line.startswith(f"{name}=")]
    return value


def slot_bytes(config: ServiceConfig) -> int:
    """The guide's slot: width x height x 3 x num_frames, plus num_frames x 384 000 / fps for the sound."""
    sampling = config.default_request.sampling
    frames = sampling.width * sampling.height * 3 * sampling.num_frames
    return frames + sampling.num_frames * 384_000 // sampling.fps


def shm_bytes(config: ServiceConfig) -> int:
    """The guide's /dev/shm formula: num_workers x 4 slots x slot_bytes."""
    return config.pool.num_workers * SLOTS_PER_WORKER * slot_bytes(config)


def test_the_guides_config_validates_and_keeps_the_server_behind_nginx_with_auth() -> None:
    config = deployed_config()
    assert config.server.host == "127.0.0.1" and config.auth is not None and config.auth.mode != "none"
    assert config.server.allowed_origins is None, "the guide relies on the same-origin check through nginx"
    (upstream,) = [d for d in snippet_directives(SNIPPET.read_text()) if d.startswith("server 127.0.0.1:")]
    assert upstream == f"server {config.server.host}:{config.server.port};"
    # Every secret the config names is one the systemd unit's EnvironmentFile comment lists.
    assert config.webrtc.turn is not None
    unit = SYSTEMD.read_text()
    for name in [*config.auth.token_envs, config.webrtc.turn.secret_env]:
        assert f"{name}=" in unit and f"{name}=" in guide(), name


def test_the_guides_turn_urls_use_the_shipped_coturn_listeners() -> None:
    turn = deployed_config().webrtc.turn
    assert turn is not None
    ports = {url.split("?")[0].rsplit(":", 1)[1] for url in turn.urls if url.startswith("turn:")}
    tls_ports = {url.split("?")[0].rsplit(":", 1)[1] for url in turn.urls if url.startswith("turns:")}
    assert ports == {coturn_setting("listening-port")}
    assert tls_ports == {coturn_setting("tls-listening-port")}
    transports = sorted(url.split("transport=")[1] for url in turn.urls)
    assert transports == ["tcp", "tcp", "udp"], "UDP, TCP and TLS, as the guide's firewall table opens"


def test_the_guides_port_range_holds_every_peer_the_server_can_have() -> None:
    config = deployed_config()
    assert config.webrtc.udp_port_range is not None
    low, high = config.webrtc.udp_port_range
    peers = (1 + PENDING_FACTOR) * Capacity.for_config(config).total
    assert high - low + 1 >= peers
    assert f"{peers} ports" in guide()
    assert f"{low}–{high}" in guide() and f"ufw allow {low}:{high}/udp" in guide()
    relay = (int(coturn_setting("min-port")), int(coturn_setting("max-port")))
    assert high < relay[0] or low > relay[1], "the server's range must not overlap coturn's relay range"


def test_the_guides_heartbeat_fits_the_snippets_websocket_timeout() -> None:
    heartbeat = deployed_config().websocket.heartbeat_seconds
    assert heartbeat is not None
    directives = snippet_directives(SNIPPET.read_text())
    stream = directives[directives.index("location = /v1/stream {") :]
    (timeout,) = [d for d in stream if d.startswith("proxy_read_timeout ")][:1]
    assert 2 * heartbeat <= int(timeout.split()[1].rstrip("s;"))


def test_the_guides_shm_figures_follow_from_the_code() -> None:
    config = deployed_config()
    slot = slot_bytes(config)
    text = guide()
    assert f"`SLOTS_PER_WORKER` = {SLOTS_PER_WORKER}" in text
    assert f"{slot // MIB} MiB a slot, {SLOTS_PER_WORKER * slot // MIB} MiB per worker" in text
    assert config.pool.num_workers == 1 and shm_bytes(config) <= 512 * MIB  # --shm-size 512m for one GPU
    assert f"({8 * SLOTS_PER_WORKER * slot // MIB} MiB)" in text and 8 * SLOTS_PER_WORKER * slot <= 2048 * MIB


def test_every_file_the_guide_names_exists() -> None:
    named = set(re.findall(r"`((?:deploy|configs|docs|tests)/[\w./-]+|Dockerfile)`", guide()))
    assert {"deploy/nginx/rtc-server.conf", "deploy/coturn/turnserver.conf", "Dockerfile"} <= named
    missing = [path for path in sorted(named) if not (ROOT / path).exists()]
    assert not missing, missing


def shm_mappings() -> dict[str, int]:
    """POSIX shared memory objects this process maps: name -> size in bytes."""
    sizes: dict[str, int] = {}
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            sizes[parts[5]] = sizes.get(parts[5], 0) + end - start
    return sizes


async def test_a_worker_pool_maps_what_the_guides_formula_says(start_server: Any) -> None:
    before = shm_mappings()
    config = make_config(pool={"backend": "subprocess", "num_workers": 2})
    await start_server(config)
    slots = {name: size for name, size in shm_mappings().items() if name not in before}
    assert len(slots) == 2 * SLOTS_PER_WORKER
    # Mappings are whole pages: the guide's bytes, rounded up to one.
    page = mmap.PAGESIZE
    assert set(slots.values()) == {-(-slot_bytes(config) // page) * page}
    assert 0 <= sum(slots.values()) - shm_bytes(config) < len(slots) * page
