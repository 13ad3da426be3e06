"""Packaging: the built wheel alone serves the page and streams; the deployment files match the README.

The slow tests build the wheel from the files the Docker build context holds (.dockerignore's
whitelist), install it into a fresh venv (no system site-packages) with its dependencies from the
local wheelhouse that scripts/test.sh fills before entering the network namespace, and run the
``rtc-server`` console script from a directory outside the repository.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpu.subprocess_pool import STOP_GRACE_S
from rtc_server.app import DEFAULT_WEB_CLIENT_DIR
from rtc_server.cli import SHUTDOWN_TIMEOUT_S, main
from rtc_server.clients.ws_client import WebSocketClient
from rtc_server.config import ConfigError
from rtc_server.packaged import resolve_config_path, shipped_config_names, shipped_dir

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = REPO / ".cache" / "wheelhouse"
UNIT = REPO / "deploy" / "systemd" / "rtc-server.service"
SHIPPED_CONFIGS = sorted(path.name for path in (REPO / "configs").glob("*.yaml"))
INIT = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that points Python or pip at this checkout or its indexes."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PIP_", "PYTHON")) and key not in ("VIRTUAL_ENV", "CONDA_PREFIX")
    }
    env["PIP_CONFIG_FILE"] = os.devnull  # no pip.conf either: only what the command line says
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return {**env, **extra}


def run(*args: str | Path, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        check=False,
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def build_inputs() -> list[str]:
    """The paths .dockerignore lets into the Docker build context: all that ``pip install .`` may read."""
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line[1:] for line in lines if line.startswith("!")]


# -- README, Dockerfile, systemd: fast checks -------------------------------------------------------


def readme_install_commands() -> list[str]:
    """The commands before the server starts on the first line of README's first bash block."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL)
    assert block is not None, "README.md has no ```bash block"
    first_line = block.group(1).splitlines()[0].split("#", 1)[0]
    commands = [command.strip() for command in first_line.split("&&")]
    starts = [i for i, c in enumerate(commands) if c.startswith(("rtc-server", "python -m rtc_server"))]
    assert starts, f"README's first command line does not start the server: {first_line!r}"
    return commands[: starts[0]]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            name, _, arguments = line.strip().partition(" ")
            instructions.append((name.upper(), arguments.strip()))
    return instructions


def test_dockerfile_runs_exactly_the_readme_install_steps() -> None:
    runs = [arguments for name, arguments in dockerfile_instructions() if name == "RUN"]
    assert runs == readme_install_commands()


def test_docker_image_starts_the_console_script() -> None:
    instructions = dict(dockerfile_instructions())
    assert instructions["ENTRYPOINT"] == '["rtc-server"]'
    assert instructions["STOPSIGNAL"] == "SIGTERM"
    assert instructions["USER"] not in ("root", "0")


def read_unit() -> configparser.RawConfigParser:
    unit = configparser.RawConfigParser(strict=False)  # systemd allows repeated keys
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string(UNIT.read_text(encoding="utf-8"))
    return unit


def test_systemd_unit_runs_the_console_script_and_stops_gracefully() -> None:
    service = read_unit()["Service"]
    command = service["ExecStart"].split()
    assert Path(command[0]).name == "rtc-server" and command[0].startswith("/")
    assert command[1] == "--config" and command[2].startswith("/etc/rtc-server/")
    assert service["EnvironmentFile"].lstrip("-").startswith("/etc/rtc-server/")
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a bad config does not get better by restarting
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert float(service["TimeoutStopSec"]) > 2 * (SHUTDOWN_TIMEOUT_S + STOP_GRACE_S)
    assert service["User"] not in ("root", "0")
    assert int(service["LimitNOFILE"]) >= 65536
    assert "PrivateDevices" not in service and "DevicePolicy" not in service  # they would hide the GPUs


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify wants ExecStart's binary to exist: point it at one that does, and check everything else.
    text = UNIT.read_text(encoding="utf-8")
    unit = tmp_path / UNIT.name
    unit.write_text(re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", text, flags=re.MULTILINE), encoding="utf-8")
    result = run("systemd-analyze", "verify", "--man=no", unit, cwd=tmp_path, timeout=60)
    # Unknown keys and bad values are only warnings: any output at all is a failure.
    assert result.returncode == 0 and not result.stdout and not result.stderr, result.stdout + result.stderr


# -- config names and the page directory in this checkout ----------------------------------------------


def test_a_shipped_config_is_found_by_name_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert shipped_config_names() == SHIPPED_CONFIGS
    assert resolve_config_path("dev.yaml") == shipped_dir("configs") / "dev.yaml"
    assert resolve_config_path("dev") == shipped_dir("configs") / "dev.yaml"
    assert resolve_config_path("dev").read_bytes() == (REPO / "configs" / "dev.yaml").read_bytes()


def test_a_real_file_wins_over_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dev.yaml").write_text("server: {port: 9999}\n")
    assert resolve_config_path("dev.yaml") == Path("dev.yaml")
    # A path with a directory part is never looked up by name: load_config reports it if missing.
    assert resolve_config_path("elsewhere/dev.yaml") == Path("elsewhere/dev.yaml")


def test_an_unknown_name_exits_2_listing_the_shipped_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        resolve_config_path("nope")
    assert all(name in str(caught.value) for name in SHIPPED_CONFIGS)
    assert main(["--config", "nope.yaml"]) == 2
    errors = capsys.readouterr().err
    assert "nope.yaml" in errors and all(name in errors for name in SHIPPED_CONFIGS)


def test_a_checkout_serves_its_own_web_client_live() -> None:
    # An editable install (scripts/test.sh) has no packaged copy: edits to web_client/ show at once.
    assert not (REPO / "rtc_server" / "web_client").exists()
    assert DEFAULT_WEB_CLIENT_DIR == REPO / "web_client"


# -- the built wheel in a fresh venv -------------------------------------------------------------


@dataclass(frozen=True)
class FreshInstall:
    wheel: Path
    sdist: Path
    venv: Path
    workdir: Path  # an empty directory outside the repository to run from

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def console_script(self) -> Path:
        return self.venv / "bin" / "rtc-server"

    def package_dir(self) -> Path:
        result = run(self.python, "-c", "import rtc_server; print(rtc_server.__file__)", cwd=self.workdir)
        assert result.returncode == 0, result.stderr
        return Path(result.stdout.strip()).parent


def check(result: subprocess.CompletedProcess[str], what: str, hint: str = "") -> None:
    if result.returncode != 0:
        pytest.fail(f"{what} failed (exit {result.returncode}){hint}\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory: pytest.TempPathFactory) -> FreshInstall:
    if not any(WHEELHOUSE.glob("*.whl")):
        pytest.fail(
            f"no wheelhouse at {WHEELHOUSE}: run scripts/test.sh, which downloads the runtime dependencies "
            "there before it enters the network namespace (this test has no network)"
        )
    root = tmp_path_factory.mktemp("packaging")
    source, dist = root / "source", root / "dist"
    for name in build_inputs():
        original = REPO / name
        if original.is_dir():
            shutil.copytree(original, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(original, source / name)
    check(
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
            "-w", dist, source, cwd=root),
        "building the wheel",
    )  # fmt: skip
    sdist_code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"
    check(run(sys.executable, "-c", sdist_code, cwd=source), "building the sdist")
    check(run(sys.executable, "-m", "venv", root / "venv", cwd=root), "creating the venv")
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    check(
        run(root / "venv" / "bin" / "python", "-m", "pip", "install", "-q", "--no-index",
            "--find-links", WHEELHOUSE, wheel, cwd=root),
        "installing the wheel from the wheelhouse",
        f"; if a dependency is missing from {WHEELHOUSE}, run scripts/test.sh to refresh it",
    )  # fmt: skip
    workdir = root / "elsewhere"
    workdir.mkdir()
    return FreshInstall(wheel=wheel, sdist=sdist, venv=root / "venv", workdir=workdir)


def repo_files(name: str) -> set[str]:
    directory = REPO / name
    return {
        path.relative_to(directory).as_posix()
        for path in directory.rglob("*")
        if path.is_file()
        and not any(p.startswith(".") or p == "__pycache__" for p in path.relative_to(directory).parts)
    }


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_and_the_install_carry_the_page_and_the_configs(fresh_install: FreshInstall) -> None:
    names = set(zipfile.ZipFile(fresh_install.wheel).namelist())
    for shipped in ("web_client", "configs"):
        packaged = {n.removeprefix(f"rtc_server/{shipped}/") for n in names if n.startswith(f"rtc_server/{shipped}/")}
        assert packaged == repo_files(shipped)
    assert not any(n.startswith(("web_client/", "configs/", "tests/")) for n in names)  # only inside the package
    entry_points = zipfile.ZipFile(fresh_install.wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    )
    assert b"rtc-server = rtc_server.cli:main" in entry_points
    with tarfile.open(fresh_install.sdist) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert {"setup.py", "MANIFEST.in", "web_client/index.html", "configs/dev.yaml"} <= members

    package = fresh_install.package_dir()
    assert package.is_relative_to(fresh_install.venv), package  # the installed copy, not this checkout
    assert sorted(p.name for p in (package / "configs").glob("*.yaml")) == SHIPPED_CONFIGS
    assert (package / "web_client" / "index.html").is_file()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_console_script_and_python_m_agree_on_bad_configs(fresh_install: FreshInstall) -> None:
    (fresh_install.workdir / "bad.yaml").write_text("streaming:\n  lookahead_segments: lots\n")
    errors = {}
    for config in ("no-such-config", "bad.yaml"):
        script = run(fresh_install.console_script, "--config", config, cwd=fresh_install.workdir, timeout=60)
        module = run(
            fresh_install.python, "-m", "rtc_server", "--config", config, cwd=fresh_install.workdir, timeout=60
        )
        assert script.returncode == module.returncode == 2, script.stderr + module.stderr
        assert script.stderr == module.stderr and "Traceback" not in script.stderr
        errors[config] = script.stderr
    assert all(name in errors["no-such-config"] for name in SHIPPED_CONFIGS), errors
    assert "streaming.lookahead_segments" in errors["bad.yaml"], errors


def wait_ready(process: subprocess.Popen[str], port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"rtc-server exited with {process.returncode}: {process.communicate()[1]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    pytest.fail("rtc-server did not become ready")


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


async def receive_one_segment(base_url: str) -> None:
    """Open a session over the WebSocket with the repository's own client; wait for a whole fMP4 segment."""
    async with WebSocketClient(base_url, session_init=INIT) as client:
        await client.connect()
        await client.wait_for_event("media_segment_complete", timeout=60)
        segment = client.complete_segments[0]
        assert segment.init[4:8] == b"ftyp" and segment.chunks, "not a complete fMP4 segment"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_installed_server_serves_the_page_and_streams(fresh_install: FreshInstall) -> None:
    port = free_port()
    process = subprocess.Popen(
        [str(fresh_install.console_script), "--config", "dev", "--port", str(port)],
        cwd=fresh_install.workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready(process, port)
        base = f"http://127.0.0.1:{port}"
        status, content_type, page = get(base + "/")
        assert status == 200 and content_type.startswith("text/html")
        module = re.search(rb'<script type="module" src="([^"]+)"', page)
        assert module is not None, page[:500]
        status, content_type, script = get(base + module.group(1).decode())
        assert status == 200 and "javascript" in content_type
        packaged_page = fresh_install.package_dir() / "web_client"
        assert page == (packaged_page / "index.html").read_bytes()
        assert script == (packaged_page / Path(module.group(1).decode()).name).read_bytes()
        asyncio.run(receive_one_segment(base))
    finally:
        if process.poll() is None:
            process.terminate()
        _, errors = process.communicate(timeout=15)
    assert process.returncode == 0, errors
