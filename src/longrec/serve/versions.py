"""The model versions a server holds: one current, others by id (an A/B test, a rollback), swapped atomically.

    versions = Versions()
    versions.publish(load_artifact("models/din"))           # becomes current
    artifact = versions.current()                            # a request takes one reference and keeps it
    versions.publish(apply_delta(versions.current(), "deltas/step-00001200"))   # built aside, then swapped

**Build aside, swap the reference.** `publish` takes a finished `ModelArtifact` (loaded or built from a delta
before the call) and replaces the holder's state (current version, versions by id) with a new one in a single
reference assignment. A reader reads that reference once, so it sees the state before or after a publish, never a
half-built model or a mixture; a request that took `current()` keeps using that artifact (an ordinary Python
reference) until it finishes, even after a newer version is published and the old one is dropped from the holder.
Writers (`publish`, `retire`) take a lock; readers take none.

**Kept versions**: the current one plus the most recently published others, `keep` in all; the oldest non-current
version goes first. `publish(artifact, current=False)` adds a version beside the current one (an A/B arm).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from longrec.serve.artifact import ModelArtifact

__all__ = ["Versions"]


@dataclass(frozen=True)
class _State:
    current: ModelArtifact | None = None
    by_id: dict[str, ModelArtifact] = field(default_factory=dict)  # insertion order = publication order


class Versions:
    """A thread-safe holder of the served model versions (see the module docstring).

    Args:
        keep: the most versions held at once, the current one included (>= 1).
    """

    def __init__(self, keep: int = 2) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"Versions.keep must be a positive int. Got {keep!r} instead.")
        self.keep = keep
        self._state = _State()
        self._lock = threading.Lock()  # writers only

    def current(self) -> ModelArtifact:
        """The current version.

        Raises:
            LookupError: nothing was published yet.
        """
        current = self._state.current
        if current is None:
            raise LookupError("no model version has been published yet: publish a loaded artifact first.")
        return current

    def get(self, version: str) -> ModelArtifact:
        """A held version by id.

        Raises:
            KeyError: the version is not held (the message lists the held ones).
        """
        state = self._state  # one read: a consistent state
        if version not in state.by_id:
            held = ", ".join(state.by_id) or "none"
            raise KeyError(f"Unknown model version '{version}'. Held versions: {held}.")
        return state.by_id[version]

    def versions(self) -> list[str]:
        """The held version ids, oldest published first."""
        return list(self._state.by_id)

    def publish(self, artifact: ModelArtifact, current: bool = True) -> None:
        """Hold `artifact` (a finished one: nothing is built here), as the current version unless `current=False`."""
        with self._lock:
            old = self._state
            by_id = {v: a for v, a in old.by_id.items() if v != artifact.version}
            by_id[artifact.version] = artifact
            now = artifact if current or old.current is None else old.current
            for version in list(by_id):
                if len(by_id) <= self.keep:
                    break
                if version != now.version:
                    del by_id[version]
            self._state = _State(now, by_id)  # the swap: one reference assignment

    def retire(self, version: str) -> None:
        """Stop holding a version (in-flight requests that took it finish with it).

        Raises:
            KeyError: unknown version.
            ValueError: it is the current version (publish another first).
        """
        with self._lock:
            old = self._state
            self.get(version)
            if old.current is not None and old.current.version == version:
                raise ValueError(f"version '{version}' is current: publish another version before retiring it.")
            self._state = _State(old.current, {v: a for v, a in old.by_id.items() if v != version})
