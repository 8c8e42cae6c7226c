"""One exception family for everything a user can get wrong.

Every error names the file, field or value at fault and what would be valid,
so the CLI can print it as one line instead of a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class OServeError(ValueError):
    """Base class: bad input the user can fix. The CLI prints these without a traceback."""


class ConfigError(OServeError):
    """A catalog, cluster, model, engine or deployment config that is malformed or impossible."""


class UnknownNameError(ConfigError):
    """A name (GPU, model, cluster, trace, policy) that is not in its catalog."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], source: str | None = None):
        valid = sorted(set(valid))
        close = difflib.get_close_matches(str(name).lower(), valid, n=3, cutoff=0.4)
        where = f" in {source}" if source else ""
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(valid[:40]) + (" ..." if len(valid) > 40 else "")
        super().__init__(f"unknown {kind} {name!r}{where}{hint} (valid: {shown})")
        self.kind, self.name, self.close = kind, name, close
        self._init_args = (kind, name, valid, source)

    def __reduce__(self):
        # Pickled from worker processes (evaluate --jobs, Ray): rebuild from the constructor's arguments.
        return (type(self), self._init_args)


class DoesNotFitError(ConfigError):
    """A replica or deployment that does not fit in GPU memory or in the cluster."""


class TraceError(OServeError):
    """A trace file that cannot be read as requests: names file, row and field."""


class CheckpointError(OServeError):
    """A checkpoint or exported policy from another env version or of the wrong kind."""
