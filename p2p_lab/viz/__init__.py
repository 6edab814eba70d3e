"""Pure plotting functions (``plot_*(...) -> matplotlib Figure``), one module per notebook topic."""
from .attention import *  # noqa: F401,F403
from .ldm import *  # noqa: F401,F403
from .ddpm import *  # noqa: F401,F403
