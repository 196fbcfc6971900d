"""SWAP, when: the swap modes as scheduling policies, one small class each.

A registry that a caller finds stale (`registry.stale()`: the token changed, or a retry or a
verify is due) asks its policy what to answer with now. The policy either hands the check to the
registry's worker thread and answers with the live handle, or says that the caller must run
`registry.check()` itself first. The check is the same function either way:

    sync          a new checkpoint is checked by the caller, which waits for it; timers (a retry
                  of content that failed, a manifest re-read) and loads whose turn has not come
                  under `max_concurrent_loads` go to the worker while the live model answers
    background    every check goes to the worker while the live model answers

With nothing live yet, every policy lets the caller check: there is nothing else to answer with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .loading import LiveModel

__all__ = ["SWAP_POLICIES", "BackgroundSwap", "Schedulable", "SwapPolicy", "SyncSwap"]


class Schedulable(Protocol):
    """What a policy may ask of a registry."""

    @property
    def current(self) -> LiveModel | None: ...

    def token_changed(self) -> bool:
        """The served source's token differs from the one last decided on (not only a timer)."""

    def turn_taken(self) -> bool:
        """Other processes hold every load slot for this model right now."""

    def schedule(self) -> None:
        """Run `check()` on the registry's worker thread, unless it is running one already."""


class SwapPolicy(Protocol):
    """Decides, for a stale registry, whether the caller answers now or checks first."""

    name: str

    def serve_stale(self, registry: Schedulable) -> LiveModel | None:
        """The handle to answer with now (the check was handed to the worker), or None when the
        caller must run `registry.check()` first."""


class SyncSwap:
    """Requests that find a new checkpoint wait for it."""

    name = "sync"

    def serve_stale(self, registry: Schedulable) -> LiveModel | None:
        live = registry.current
        if live is None or (registry.token_changed() and not registry.turn_taken()):
            return None
        registry.schedule()
        return live


class BackgroundSwap:
    """Requests never wait once a model is live: the old one answers while the new one loads."""

    name = "background"

    def serve_stale(self, registry: Schedulable) -> LiveModel | None:
        live = registry.current
        if live is None:
            return None
        registry.schedule()
        return live


#: The `swap=` option's values.
SWAP_POLICIES: dict[str, type[SwapPolicy]] = {"sync": SyncSwap, "background": BackgroundSwap}
