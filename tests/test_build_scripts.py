"""The scripts that build the test parts work on a machine that has none of them yet.

A fresh machine's first `.ci/run` found `scripts/build-test-s3` failing after a good build:
its EXIT trap named a `local` variable, unbound by the time the trap ran (`set -u`). Every
machine before had the binary cached, so that path had never run. Here it runs with a
stand-in `go` (a real build takes minutes; what is tested is the script around it): into an
empty cache, then again with the binary there.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# writes an executable at the `-o` path it is given, and logs each call
FAKE_GO = """#!/bin/sh
echo "$*" >> "$FAKE_GO_LOG"
while [ $# -gt 0 ]; do
  if [ "$1" = -o ]; then printf '#!/bin/sh\\n' > "$2"; chmod +x "$2"; fi
  shift
done
"""


def test_the_s3_server_build_succeeds_into_an_empty_cache_and_leaves_no_stage(
        tmp_path: Path) -> None:
    go, log, cache = tmp_path / "go", tmp_path / "go.log", tmp_path / "cache"
    go.write_text(FAKE_GO)
    go.chmod(0o755)
    env = {**os.environ, "BATCHQ_CACHE": str(cache), "BATCHQ_GO": str(go),
           "FAKE_GO_LOG": str(log)}

    def build() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ROOT / "scripts" / "build-test-s3")], env=env,
                              capture_output=True, text=True, timeout=60)

    first = build()
    assert first.returncode == 0, first.stderr
    bin_dir = Path(first.stdout.strip().splitlines()[-1])
    assert (bin_dir / "weed").is_file() and os.access(bin_dir / "weed", os.X_OK)
    assert bin_dir.is_relative_to(cache)
    assert [p.name for p in bin_dir.parent.iterdir()] == ["bin"], "a stage dir was left"
    assert len(log.read_text().splitlines()) == 1  # one go build
    again = build()
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == str(bin_dir)
    assert len(log.read_text().splitlines()) == 1, "built again although it was there"
