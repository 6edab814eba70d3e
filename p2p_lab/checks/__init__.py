"""Public checks for the notebooks' exercises: ``check_<exercise>(student_function)``.

Each prints one line, PASSED or FAILED with a hint naming the likely mistake, and returns a
:class:`CheckResult` (truthy when passed). One module per notebook; all checks are importable
from here.
"""
from ._core import CheckResult, Mistake, run_check  # noqa: F401
from .p2p import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
from .ddpm import *  # noqa: F401,F403
from .ldm import *  # noqa: F401,F403
from .inversion import *  # noqa: F401,F403
