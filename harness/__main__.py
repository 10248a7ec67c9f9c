"""`python -m harness` is the `harness` command."""

import sys

from .frontends.cli import main

sys.exit(main())
