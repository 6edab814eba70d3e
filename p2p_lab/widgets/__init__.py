"""ipywidgets UIs (``make_*_ui(...)``) wired to the pure plotting functions in ``p2p_lab.viz``."""
from .p2p import *  # noqa: F401,F403
from .ddpm import *  # noqa: F401,F403
