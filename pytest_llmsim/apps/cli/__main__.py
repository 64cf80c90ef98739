"""``python -m pytest_llmsim.apps.cli``: the ``llmsim`` command."""

import sys

from pytest_llmsim.apps.cli.main import main

if __name__ == "__main__":  # imported (not run) by the structure tests
    sys.exit(main())
