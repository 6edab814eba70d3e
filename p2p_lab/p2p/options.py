"""Options as data: ``EditOptions``, the one typed record of what an edit can be asked; and unknown
keyword options as errors that name the valid ones (never silently ignored)."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import numbers
from typing import Mapping, Sequence, Union

Tau = Union[float, tuple, Mapping]  # 0.8 | (start, end) | {word: tau, "default_": tau}


def unknown_option(owner: str, name: str, names: Sequence[str]) -> TypeError:
    """The error for an option ``owner`` does not have, with the closest valid name."""
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return TypeError(f"{owner}() has no option {name!r}{hint}; valid options: {', '.join(names)}")


def strict_options(fn):
    """Decorator: an unknown keyword raises TypeError listing the function's options."""
    sig = inspect.signature(fn)
    names = [p.name for p in sig.parameters.values()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            raise unknown_option(fn.__name__, unknown[0], names)
        return fn(*args, **kwargs)

    return wrapper


@dataclasses.dataclass(frozen=True)
class EditOptions:
    """What a Prompt-to-Prompt edit is asked (notebook 05): ``p2p.edit(pipe, source, targets, **options)``
    builds one; the plan, the widgets, the CLI and the source cache's key read it.

    The defaults are the paper's settings. None means "the default": for steps and guidance the
    model's (:func:`p2p_lab.model.sampling_defaults`), for ``mapper`` "copy", for ``seed`` 0.
    ``context_tau`` is the one setting the course adds beyond the paper: 0 (off) unless asked.
    """

    mode: str | None = None  # "replace" (word swap), "refine" (insertion) or None (by word counts)
    cross_tau: Tau = 0.8  # fraction of steps with the source's cross-attention
    self_tau: float | tuple = 0.4  # the same for self-attention, in layers up to self_max_res
    reweight: Mapping | Sequence[Mapping] | None = None  # {word: scale}, or one dict per target
    local_blend: object = None  # words, or a p2p.LocalBlend
    mapper: str | None = None  # replace edits: "copy" (default) or "average" (one token -> several)
    seed: int | None = None  # z_T's seed (default 0); not with an inversion
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    self_max_res: int = 16  # self-attention is replaced in layers up to this resolution
    context_tau: float | tuple = 0.0  # not in the paper, opt-in: steps in which unchanged tokens keep the source's embedding
    progress: bool | None = None  # a progress bar (default: on for Stable Diffusion only)

    @classmethod
    def of(cls, options: "EditOptions | None" = None, owner: str = "edit", also: Sequence[str] = (),
           **kwargs) -> "EditOptions":
        """``options`` (default: all defaults) with ``kwargs`` replacing fields; an unknown name is a
        TypeError naming the valid ones (the fields and ``also``, the caller's other keywords)."""
        names = [f.name for f in dataclasses.fields(cls)]
        for k in kwargs:
            if k not in names:
                raise unknown_option(owner, k, [*names, *also])
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"options must be an EditOptions, got {type(options).__name__}; "
                            f"or pass the options as keywords: edit(pipe, source, targets, cross_tau=...)")
        return dataclasses.replace(options or cls(), **kwargs)

    def __post_init__(self):
        for name in ("cross_tau", "reweight"):  # a copy: the caller's dict may change afterwards
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, dict(value))
            elif name == "reweight" and isinstance(value, list):
                object.__setattr__(self, name, [dict(v) if isinstance(v, Mapping) else v for v in value])
        if self.mapper not in (None, "copy", "average"):
            raise ValueError(f"mapper {self.mapper!r} is unknown; use 'copy' or 'average'")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)):
            raise TypeError(f"seed must be an int, got {self.seed!r}")

    def plan_options(self) -> dict:
        """The keywords of :func:`p2p_lab.p2p.controls.build_plan`."""
        return dict(mode=self.mode, cross_tau=self.cross_tau, self_tau=self.self_tau, reweight=self.reweight,
                    mapper=self.mapper, self_max_res=self.self_max_res)
