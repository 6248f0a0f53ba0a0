"""``python -m pyrobayes ...``: the ``pyrobayes`` command (:mod:`pyrobayes.jobs.cli`)."""

import sys

from pyrobayes.jobs.cli import main

if __name__ == "__main__":
    sys.exit(main())
