"""`python -m expert_svc`: serve one expert until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys

from .config import config_from_args
from .errors import EngineStartupError
from .server import preflight, serve


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_from_args(argv)
        # A wrong model directory is a usage error: named before anything is bound or imported.
        preflight(cfg)
    except (ValueError, EngineStartupError) as exc:
        print(f"expert_svc: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(cfg))
    except (OSError, EngineStartupError, ValueError) as exc:
        logging.getLogger("expert_svc").error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
