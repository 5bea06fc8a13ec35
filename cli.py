"""`python cli.py ...` from a checkout: the installed `nvc` command (nvc_cli/)."""
from nvc_cli import run

if __name__ == "__main__":
    run()
