"""`python -m nvc_cli`: the `nvc` command without its console script."""
from nvc_cli import run

run()
