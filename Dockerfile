# rtc-server in a container. The build steps are exactly the README's install steps (a test in
# tests/test_packaging.py compares the RUN lines with README's first command line), so the image is
# what a fresh machine gets from `pip install .`: the page, the shipped configs and the synthetic
# generator, no torch. No apt packages are needed: PyAV, aiortc (libsrtp), cryptography, numpy and
# Pillow come as manylinux wheels with their native libraries (ffmpeg, libvpx, opus, ...) inside.
# A GPU image installs a CUDA build of torch and the `diffusers` extra in a Dockerfile of its own.
FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install .

# Inside a container the server must listen on 0.0.0.0, and the server refuses to do that without
# an `auth` section (a reachable port with no auth would let anyone spend the GPUs). So the image
# carries no config of its own: it runs the operator's, mounted at the path the systemd unit uses,
# with its secrets from the environment, e.g.
#   docker run -p 8080:8080 -e RTCVS_TOKEN -v "$PWD/rtc-server.yaml:/etc/rtc-server/config.yaml:ro" IMAGE
# where rtc-server.yaml has `server: {host: 0.0.0.0}` and `auth: {mode: token, token_envs: [RTCVS_TOKEN]}`
# (configs/ltx-video-gpu.yaml is a production example). Arguments after IMAGE replace the CMD, e.g.
#   docker run --network host IMAGE --config dev.yaml        (a shipped config by name, loopback only)
# WebRTC media is UDP: publish webrtc.udp_port_range (-p 40000-40100:40000-40100/udp) and set
# webrtc.public_addresses, or use --network host. GET /healthz and /readyz suit health checks.
# SIGTERM (docker stop) ends sessions and workers, then exits 0; with worker processes give it
# time: docker run --stop-timeout 30 (as the systemd unit's TimeoutStopSec).
USER nobody
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["rtc-server"]
CMD ["--config", "/etc/rtc-server/config.yaml"]
