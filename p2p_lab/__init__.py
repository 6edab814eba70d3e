"""p2p_lab: the code behind the Prompt-to-Prompt course (notebooks 01-05).

Modules, in teaching order: ``attention`` (01-02), ``ddpm`` (03), ``ldm`` (04), ``p2p`` (05);
``shapes`` and ``model`` hold the shipped shapes-world model; ``viz``, ``widgets`` and ``checks``
serve the notebooks.
"""
__version__ = "0.1.0"

# The one place the course's public GitHub repository is configured: every notebook's Colab badge
# and its Colab install line are built from it (tests/test_notebooks.py checks that they agree).
# A course that hosts its own copy sets it here, or passes `python -m p2p_lab release OUT --repo
# owner/name`, which writes the student notebooks with that address.
COLAB_REPO = "p2p-lab/p2p_lab"
COLAB_BRANCH = "main"


def colab_url(notebook: str, repo: str | None = None, branch: str | None = None) -> str:
    """The "Open in Colab" address of a course notebook, e.g. ``colab_url("01_attention.ipynb")``."""
    return (f"https://colab.research.google.com/github/{repo or COLAB_REPO}/blob/"
            f"{branch or COLAB_BRANCH}/notebooks/{notebook}")


def install_spec(repo: str | None = None) -> str:
    """What the notebooks' Colab set-up cell gives ``pip install``: the course repository on GitHub."""
    return f"git+https://github.com/{repo or COLAB_REPO}"
