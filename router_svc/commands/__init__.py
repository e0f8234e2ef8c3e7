"""Subcommands of the `expert-router` command line; each defines add_arguments(parser) and run(args)."""
