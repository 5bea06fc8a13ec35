"""The command line on pretend GPUs in a process of its own, for the tests that need one (a real Ctrl-C, two
processes sharing a study): `python -m tests.fake_cli GPUS ARGS...` runs `nvc ARGS...` on FakeHardware(count=GPUS)."""
import sys

from nvc_cli.commands import main
from tests.doubles import FakeHardware

if __name__ == "__main__":
    main(sys.argv[2:], obj=FakeHardware(count=int(sys.argv[1])), prog_name="nvc")
