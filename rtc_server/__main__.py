"""``python -m rtc_server``: run the service (the ``rtc-server`` console script runs the same ``main``)."""

from rtc_server.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
