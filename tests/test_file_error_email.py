"""The depositor of a batch file that never parses hears of it (issue 10 §5): one email per
commit when the address can be read from the file, none when it cannot, none twice."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures import GitRepo, PayloadServer, SmtpServer, batchq, profile_doc

BROKEN = """apiVersion: batchq.dev/v1
kind: Batch
spec:
  profile: test
  depositor: {name: Jane Depositor, email: jane@example.org}
  manifest:
    items:
      - id: a
        url: [not closed
"""


def _reconcile(repo: GitRepo, env: dict[str, str]) -> None:
    out = batchq("reconcile", "--repo", str(repo.path), "--until-idle", env=env)
    assert out.returncode == 0, out.stderr


def test_one_email_per_commit_of_a_file_that_never_parses(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    env = {"BATCHQ_STATE": str(tmp_path / "state"), "BATCHQ_SMTP": smtp.hostport}
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    git_repo.write("batches/maps.yaml", BROKEN)
    git_repo.write("batches/anon.yaml", "kind: Batch\nspec: [\n")  # no address in it
    first = git_repo.commit("submit maps (broken)")
    _reconcile(git_repo, env)
    _reconcile(git_repo, env)  # read again: nothing more is sent
    [mail] = smtp.mailbox.messages
    assert mail["Subject"] == "Ingest: FAIL -- Batch File Invalid: maps"
    assert mail["To"] == "jane@example.org"
    # the profile it names is read for its settings: its sender, and its admins in copy
    assert mail["From"] == "batchq@example.org"
    assert smtp.mailbox.envelopes == [("batchq@example.org",
                                       ["jane@example.org", "ops@example.org"])]
    body = next(p for p in mail.walk() if p.get_content_type() == "text/plain")
    text = body.get_payload(decode=True).decode().replace("\r\n", "\n")
    assert f"Commit:     {first}" in text, text
    assert "The batch file batches/maps.yaml could not be read at this commit, so the batch" \
           " did not start:\n  batches/maps.yaml:10:1: invalid YAML:" in text, text
    assert "Depositor:  <jane@example.org>\n" in text
    assert "Fix the file and commit it again: the batch starts as soon as a valid version is" \
           " committed." in " ".join(text.split())
    shown = batchq("status", "anon", env=env).stdout
    assert "anon: Invalid" in shown

    git_repo.write("batches/maps.yaml", BROKEN.replace("[not closed", "[still not closed"))
    git_repo.commit("maps: another try, still broken")
    _reconcile(git_repo, env)
    assert smtp.mailbox.subjects() == ["Ingest: FAIL -- Batch File Invalid: maps"] * 2

    fixed = BROKEN.replace("[not closed", f"'{payloads.base}a'")
    payloads.add("a", b"a\n")
    git_repo.write("batches/maps.yaml", fixed)
    git_repo.commit("maps: fixed")
    _reconcile(git_repo, env)
    assert smtp.mailbox.subjects()[2:] == ["Ingest: OK -- Submission Processed: maps"]
