"""``python -m rtc_server.router --config configs/router.yaml``: run the replica router."""

from rtc_server.router.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
