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


# mmdebstrap's own rule: the output format follows the target's ending unless --format says
FAKE_MMDEBSTRAP = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
format=auto
for a; do case $a in --format=*) format=${a#--format=};; esac; done
target=$(for a; do echo "$a"; done | tail -2 | head -1)
case $format:$target in
  tar:*|auto:*.tar) echo tarball > "$target" ;;
  *) mkdir -p "$target/etc" ;;
esac
"""
# buildah: the base image exists once committed; everything else succeeds
FAKE_BUILDAH = """#!/bin/sh
echo "buildah $*" >> "$FAKE_LOG"
for a; do
  case $a in
    inspect) [ -e "$FAKE_STATE/base" ]; exit ;;
    commit) touch "$FAKE_STATE/base"; exit 0 ;;
    from) echo ctr; exit 0 ;;
  esac
done
exit 0
"""


def test_the_image_base_is_made_once_as_a_tarball_on_a_fresh_machine(tmp_path: Path) -> None:
    """The first build makes the base rootfs as a tar file and the second finds it; a
    directory an earlier version left in its place is replaced. (The old script let
    mmdebstrap pick the format by the name "rootfs.tar.tmp": a directory, which the next
    build did not take for the base, made again, and failed to move over the first.)"""
    bin_dir, log, state = tmp_path / "bin", tmp_path / "calls.log", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("mmdebstrap", FAKE_MMDEBSTRAP), ("buildah", FAKE_BUILDAH)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    cache = tmp_path / "cache"
    env = {**os.environ, "BATCHQ_CACHE": str(cache), "FAKE_LOG": str(log),
           "FAKE_STATE": str(state), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    base = cache / "image-base-bookworm" / "rootfs.tar"

    def build() -> None:
        done = subprocess.run([str(ROOT / "scripts" / "build-image")], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1].startswith("localhost/batchq:")

    def bootstraps() -> int:
        return sum(1 for line in log.read_text().splitlines() if "bookworm" in line
                   and not line.startswith("buildah"))

    build()
    assert base.is_file() and not base.with_suffix(".tar.tmp").exists()
    build()
    assert bootstraps() == 1, log.read_text()  # the second build found it
    base.unlink()
    (base / "etc").mkdir(parents=True)  # what the old script left
    build()
    assert base.is_file() and bootstraps() == 2
