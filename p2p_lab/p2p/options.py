"""Unknown keyword options are errors that name the valid ones (never silently ignored)."""
from __future__ import annotations

import difflib
import functools
import inspect


def strict_options(fn):
    """Decorator: an unknown keyword raises TypeError listing the function's options."""
    sig = inspect.signature(fn)
    names = [p.name for p in sig.parameters.values()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            k = unknown[0]
            close = difflib.get_close_matches(k, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{fn.__name__}() has no option {k!r}{hint}; valid options: {', '.join(names)}")
        return fn(*args, **kwargs)

    return wrapper
