"""``python -m pocketrec``: the command line, also what ``torchrun ... -m pocketrec train ...`` runs in every
worker (see ``docs/distributed.md``). Under a launcher, an uncaught error is recorded for it, so the job
reports the failing rank's traceback."""

from __future__ import annotations

import os

from pocketrec.cli import main

if __name__ == "__main__":
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import record

        record(main)()
    else:
        main()
