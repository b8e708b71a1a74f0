"""`python -m reconciler` is the `batchq` command."""

import sys

from reconciler.app.cli import main

sys.exit(main())
