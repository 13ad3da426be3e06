"""``python -m rtc_server``: run the service."""

from rtc_server.cli import main

raise SystemExit(main())
