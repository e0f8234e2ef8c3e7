"""``python -m router_svc``: serve the router until SIGTERM (exit 0 after draining).

With ``--workers N`` (default: one per core) this process supervises N router processes that share
the port (router_svc.workers); each of them runs this same entry point with ``--worker-index``.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from router_svc import config, logging_setup
from service_base.lifetime import die_with_parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m router_svc",
                                     description="Classify prompts and relay them to the best expert.")
    config.add_arguments(parser)
    # Set by the supervisor for its workers: share the port, leave the metrics endpoint to the parent.
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    die_with_parent()  # a worker of --workers N: before anything else (service_base.lifetime)
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        cfg = config.from_sources(args)
        config.check_files(cfg)
        if cfg.auth_tokens is not None:  # a bad token file stops the start, like a bad config
            from router_svc.auth import load_tokens

            load_tokens(cfg.auth_tokens)
    except config.ConfigError as exc:
        parser.error(str(exc))
    logging_setup.configure(cfg.log_level, cfg.log_format)

    if cfg.workers > 1 and args.worker_index is None:
        from router_svc import workers

        try:
            return workers.supervise(cfg, argv)
        except OSError as exc:
            logging_setup.flush()
            print(f"error: cannot start the router: {exc}", file=sys.stderr)
            return 1
        finally:
            logging_setup.shutdown()

    from router_svc import server

    worker = args.worker_index is not None
    try:
        asyncio.run(server.serve(cfg, load_config=lambda: config.from_sources(args), watch_path=args.config,
                                 reuse_port=worker, serve_metrics=not worker))
    except (OSError, ValueError) as exc:  # port taken, classifier artifact missing or invalid
        logging_setup.flush()
        print(f"error: cannot start the router: {exc}", file=sys.stderr)
        return 1
    finally:
        logging_setup.shutdown()  # the last request lines are written before the process ends
    return 0


if __name__ == "__main__":
    sys.exit(main())
