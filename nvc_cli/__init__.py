"""nano-vllm-coconut's command line, `nvc` (nvc_cli/commands.py has the commands). `run` is the console script: it
needs the [tune] extra, and says so in one line where a base install lacks it."""
from __future__ import annotations

import importlib.util
import sys

TUNE_EXTRA = "pip install 'nano-vllm-coconut[tune]'"


def run() -> None:
    missing = [name for name in ("click", "optuna", "sqlalchemy", "alembic", "pandas")
               if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"nvc: the command line needs the [tune] extra ({', '.join(missing)} not installed): {TUNE_EXTRA}")
    from nvc_cli.commands import main

    main()
