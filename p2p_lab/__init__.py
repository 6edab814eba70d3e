"""p2p_lab: the code behind the Prompt-to-Prompt course (notebooks 01-05).

Modules, in teaching order: ``attention`` (01-02), ``ddpm`` (03), ``ldm`` (04), ``p2p`` (05);
``shapes`` and ``model`` hold the shipped shapes-world model; ``viz``, ``widgets`` and ``checks``
serve the notebooks.
"""
__version__ = "0.1.0"

# The one place the course's public repository is configured: Colab badges and the Colab
# install line are built from it.
COLAB_REPO = "p2p-lab/p2p_lab"
COLAB_BRANCH = "main"


def colab_url(notebook: str) -> str:
    """The "Open in Colab" address of a course notebook, e.g. ``colab_url("01_attention.ipynb")``."""
    return (f"https://colab.research.google.com/github/{COLAB_REPO}/blob/{COLAB_BRANCH}/"
            f"notebooks/{notebook}")
