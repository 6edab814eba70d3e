"""Prompt-to-Prompt (Hertz et al. 2022) for any diffusers Stable-Diffusion-style pipeline.

Taught in notebook 05. Modules, one concept each: ``equations`` (the paper's equations under their
names), ``align`` (words, tokens, mappers), ``schedule`` (tau and alpha), ``options`` (an edit's
options as one record, ``EditOptions``), ``controls`` (the edit plan and the controls the attention
hook of :mod:`p2p_lab.unet_attention` asks), ``store`` (attention maps), ``blend`` (local blend),
``cache`` (source caching), ``sampling`` (runs on the one loop, mask-based editing), ``edit``
(Prompt-to-Prompt itself), ``inversion`` (a real image inverted for editing, notebook 06:
``invert``, ``Inversion``, one class per method in ``INVERSION_METHODS``), ``cli``
(``python -m p2p_lab edit``). The fixed-seed baseline is :func:`p2p_lab.baseline.fixed_seed`.
"""
from .align import (global_alignment, refine_mapper, refine_matrix, replace_mapper,  # noqa: F401
                    token_indices, words_of)
from .blend import LocalBlend  # noqa: F401
from .cache import SourceCache  # noqa: F401
from .controls import EditPlan, build_plan  # noqa: F401
from .edit import EditResult, edit, reweight_response  # noqa: F401
from .options import EditOptions  # noqa: F401
from .inversion import METHODS as INVERSION_METHODS, Inversion, invert  # noqa: F401
from ..unet_attention import AttentionHook, LayerInfo, attention_layers, hooked  # noqa: F401
from ..baseline import fixed_seed  # noqa: F401  (the baseline of notebook 04)
from .sampling import mask_blend, record_maps  # noqa: F401
from .schedule import alpha_schedule, step_window, tau_to_timestep, timestep_to_tau  # noqa: F401
from .store import AttentionStore  # noqa: F401


def register_cli(subparsers):
    """The ``edit`` command of ``python -m p2p_lab`` (see :mod:`p2p_lab.p2p.cli`)."""
    from .cli import register

    return register(subparsers)
