"""Subcommands of ``moa`` beyond run/validate; each module exposes ``register(subparsers)``."""
