"""The local runner knows its shim by the job dir it was given, whole: after a restart a
recorded pid that now belongs to another job's shim is not taken for this job's."""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler.control.jobs import job_name
from reconciler.store.local.runner import _alive
from tests.fixtures import wait_for


def test_a_job_dir_that_is_a_prefix_of_another_is_not_the_same_job(tmp_path: Path) -> None:
    first, tenth = job_name("maps", "map001", 1), job_name("maps", "map001", 10)
    assert tenth.startswith(first)  # "maps-map001-1" is the start of "maps-map001-10"
    mine, other = tmp_path / "jobs" / first, tmp_path / "jobs" / tenth
    # the shim's argv: /bin/sh -c SCRIPT JOBDIR COMMAND... (a script sh does not exec away)
    proc = subprocess.Popen(["/bin/sh", "-c", "sleep 30; :", str(other), "/bin/true"])
    try:  # Popen returns once exec began; the kernel shows the new argv a moment later
        wait_for(lambda: b"sleep 30" in Path(f"/proc/{proc.pid}/cmdline").read_bytes(),
                 timeout=10, what="the shim's argv in /proc")
        assert _alive(proc.pid, other)
        assert not _alive(proc.pid, mine)  # the tenth attempt's shim is not the first's
    finally:
        proc.kill()
        proc.wait()
    assert not _alive(proc.pid, other)  # gone
