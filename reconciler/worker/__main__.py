"""`python -m reconciler.worker` is the `batchq-worker` program (one Job)."""

import sys

from reconciler.worker.program import main

sys.exit(main())
