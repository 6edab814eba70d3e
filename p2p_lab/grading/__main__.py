"""``python -m p2p_lab.grading release|grade``: the grading commands alone, so that the grading
parent loads no torch (``python -m p2p_lab`` imports the training code for its ``train`` command:
some 250 MB resident beside the grading process, which Gradescope's 768 MB cannot spare). The
autograder's ``run_autograder`` uses it."""
from __future__ import annotations

import argparse
import sys

from .cli import register_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2p_lab.grading", description="release the course and grade submissions")
    commands = register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return commands[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
