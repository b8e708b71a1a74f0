"""The page answers "why" and "what next" (issue 10 §5), in headless Chromium.

A real reconciler runs; after each step the page is read as a person reads it (JavaScript
off): why a batch has not started, a file that never parsed shown as Invalid, progress with
done and failed apart (2 of 4 failed is not "100%"), times shown in full and not only on
hover, the next step of a Failed batch whose restart completed, who committed each change
of the timeline and why, an out-of-sync manifest, and the list filtered by depositor.
Screenshots of each state go to test-artifacts/.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.fixtures import ADMIN, batch_doc, profile_doc
from tests.test_web_browser import Reader, Site, browser, site  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser
OTHER = {"name": "Omar Other", "email": "omar@example.org"}


def test_the_page_says_why_and_what_next(browser: Any, site: Site) -> None:  # noqa: F811
    h, payloads = site.h, site.payloads
    items = [payloads.add(f"m{i}", f"map {i}\n".encode()) for i in range(1, 5)]
    for bad in ("m3", "m4"):
        payloads.files[bad] = b"not it\n"
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("queue.yaml", {"apiVersion": "batchq.dev/v1", "kind": "Queue",
                                "spec": {"maxActiveBatches": 1}})
    h.repo.write("batches/maps.yaml", batch_doc(items, priority=1))
    h.repo.write("batches/later.yaml", batch_doc([payloads.add("l1", b"l\n")], priority=2,
                                                 depositor=OTHER))
    h.repo.write("batches/broken.yaml", "apiVersion: batchq.dev/v1\nkind: Batch\nspec: [\n")
    h.repo.commit("depositors: three batches")
    h.sync()
    h.reconcile()
    r = Reader(browser, site, "guidance")
    try:
        r.open("/batches/later")
        assert r.heading_state() == "Pending"
        assert r.text("#why") == ("Why it has not started: waiting for a free slot: 1 batches"
                                  " are active (maxActiveBatches=1); 0 batches ahead in the"
                                  " queue")
        r.shot("why-pending")
        r.open("/batches/broken")
        assert r.heading_state() == "Invalid"
        assert "No jobs: the file never parsed" in r.text()
        assert "Invalid: batches/broken.yaml never parsed" in r.text("#why")
        r.shot("invalid-file")

        h.until(lambda: h.state("maps") == "Failed", "maps to fail (2 of 4)")
        r.open("/")
        assert r.list_progress("maps") == ("100% finished: 2 completed, 2 failed, 0"
                                           " processing, of 4 jobs")
        assert r.row("maps").locator(".pct").inner_text() == "2/4 done · 2 failed"
        r.open("/batches/maps")
        times = r.text("dl.facts")
        assert " UTC)" in times  # the exact time is on the page, not only in a tooltip
        r.shot("failed-two-of-four")

        payloads.files["m3"] = b"map 3\n"  # re-uploaded; m4 is still wrong
        h.repo.edit_batch("batches/maps.yaml", restarts={"m3": 1, "m4": 1})
        h.sync()
        h.until(lambda: h.attempts("maps") == {"m1": 1, "m2": 1, "m3": 2, "m4": 2}
                and h.jobs("maps")["m3"] == "Completed" and h.jobs("maps")["m4"] == "Failed",
                "the restarts to finish")
        r.reload()
        nxt = r.text("#next-step")
        assert nxt.startswith("Next step: 1 job(s) changed since the last report (m3); 3"
                              " done, 1 failed. Next: send the update report by committing,"
                              " in batches/maps.yaml:")
        assert r.text("#next-step pre") == "  spec:\n    state: UpdateReporting"
        timeline = r.text("ol.timeline")  # who committed each change, and why
        assert ("SpecApplied generation 2 from batches/maps.yaml · Alex Admin"
                " <admin@example.org>: admin: batches/maps.yaml: {'restarts':") in timeline
        assert ("SpecApplied generation 1 from batches/maps.yaml · Jane Depositor"
                " <jane@example.org>: depositors: three batches") in timeline
        r.shot("next-step")
        r.page.locator("table.jobs tbody tr", has_text="m4").locator("a.output").click()
        assert r.page.url == site.base + "/batches/maps/jobs/maps-m4-2/output"
        out = r.text("pre.output")  # the worker's own words, reachable from the job row
        assert out.startswith("--- stderr\n") and "size mismatch" in out
        r.shot("job-output")
        r.open("/batches/maps")

        data = yaml.safe_load((h.repo.path / "batches/maps.yaml").read_text())
        data["spec"]["manifest"]["items"][3]["digest"]["value"] = "0" * 64
        h.repo.write("batches/maps.yaml", data)
        h.repo.commit("depositor: correct m4's digest", who=ADMIN)
        h.sync()
        h.reconcile()
        r.reload()
        banner = r.page.locator("section.banner", has_text="OutOfSync").inner_text()
        assert "items m4 changed in batches/maps.yaml after the batch was admitted" in banner
        r.shot("out-of-sync")

        r.open("/")
        r.row("later").locator("a", has_text=OTHER["email"]).click()
        assert r.page.url == site.base + "/?depositor=omar@example.org"
        names = r.page.locator("table.batches td.name a").all_inner_texts()
        assert names == ["later"]
        assert r.text("h1") == "Batches of omar@example.org"
        r.shot("by-depositor")
    finally:
        r.close()
