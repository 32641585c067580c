"""Fault injection for the plan tests: a plan mutator that fails at a given message."""

from __future__ import annotations


def raise_at(command: str, message: str = "injected failure"):
    """``bpp.plan_mutator`` function: the first ``command`` message raises ``RuntimeError``."""

    def mutate(msg):
        if msg.command == command:
            def boom():
                raise RuntimeError(message)
                yield  # pragma: no cover
            return boom(), None
        return None, None

    return mutate
