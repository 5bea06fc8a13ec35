"""The command line on pretend GPUs in a process of its own, for the tests that need one (a real Ctrl-C, two
processes sharing a study, one of them killed): `python -m tests.fake_cli GPUS ARGS...` runs `nvc ARGS...` on
FakeHardware(count=GPUS).

Settings from the environment, for the fault tests (they act in this process, so on a one-worker tune):
NVC_FAKE_HEARTBEAT="INTERVAL,GRACE" sets the shared study's heartbeat interval and grace period in seconds
(autotune/heartbeat.py), so a killed worker's trials go stale in seconds rather than a minute;
NVC_FAKE_STALL=PATH stops the tune inside the first trial it times (StallingTimer);
NVC_FAKE_COMPILE_PROCESSES=N compiles ahead in N processes, as on a GPU (FakeHardware's compile_processes)."""
import json
import os
import sys
import time
from pathlib import Path

from autotune import heartbeat
from autotune.timer import Timing, Workload
from nvc_cli.commands import main
from tests.doubles import FakeHardware, FakeTimer


class StallingTimer(FakeTimer):
    """FakeTimer that stops inside the first candidate it times: it writes the config to `marker`, so a test knows
    the process is mid-trial and in which trial, and waits until the file is removed (never, for a process that the
    test kills there)."""

    def __init__(self, marker: Path):
        self.marker: Path | None = marker

    def measure(self, workload: Workload, repeats: int) -> Timing:
        if workload.config is not None and self.marker is not None:
            marker, self.marker = self.marker, None
            part = marker.with_name(marker.name + ".part")
            part.write_text(json.dumps(workload.config.to_dict()))
            part.replace(marker)  # the test never reads half a file
            while marker.exists():
                time.sleep(0.05)
        return super().measure(workload, repeats)


class StallingHardware(FakeHardware):
    def __init__(self, count: int, marker: Path):
        super().__init__(count)
        self.marker = marker

    def timer(self) -> StallingTimer:
        return StallingTimer(self.marker)


if __name__ == "__main__":
    if "NVC_FAKE_HEARTBEAT" in os.environ:
        interval, grace = map(int, os.environ["NVC_FAKE_HEARTBEAT"].split(","))
        heartbeat.HEARTBEAT_INTERVAL_S, heartbeat.GRACE_PERIOD_S = interval, grace
    stall = os.environ.get("NVC_FAKE_STALL")
    gpus = int(sys.argv[1])
    compile_processes = int(os.environ.get("NVC_FAKE_COMPILE_PROCESSES", "0"))
    main(sys.argv[2:], obj=StallingHardware(gpus, Path(stall)) if stall else FakeHardware(gpus, compile_processes),
         prog_name="nvc")
