"""`python -m expert_svc`: serve one expert until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys

from service_base import logs
from service_base.lifetime import die_with_parent

from .config import check_files, config_from_args
from .errors import EngineStartupError
from .server import preflight, serve


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # started by `make run`: before anything else (service_base.lifetime)
    try:
        cfg = config_from_args(argv)
        check_files(cfg)
        # A wrong model directory is a usage error: named before anything is bound or imported.
        preflight(cfg)
    except (ValueError, EngineStartupError) as exc:
        print(f"expert_svc: error: {exc}", file=sys.stderr)
        return 2
    # The router's text format: request lines print as JSON objects, joinable on request_id.
    logs.configure(cfg.log_level.upper(), "text")
    try:
        asyncio.run(serve(cfg))
    except (OSError, EngineStartupError, ValueError) as exc:
        logging.getLogger("expert_svc").error("%s", exc)
        return 1
    finally:
        logs.shutdown()  # the last request lines are written before the process ends
    return 0


if __name__ == "__main__":
    sys.exit(main())
