"""The four seed stories (tests/test_seed_stories.py), step by step, in mode enforce, on
both backends: the depositor and the admin sign their own commits with their own SSH
keys, and every step holds exactly as without a policy, with nothing refused.

The profile is the admin's, committed before the story starts (a depositor may not commit
one); the story's own commit of it then changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.spec.policy import Mode, load_policy
from tests import test_seed_stories as seed
from tests.fixtures import ADMIN, SmtpServer, profile_doc
from tests.harness import Harness
from tests.signing import Keyring, SignedRepo, policy_doc
from tests.world import KubeWorld, LocalWorld

STORIES: list[Callable[[Harness, SmtpServer], None]] = [
    seed.test_successful_batch,
    seed.test_failed_batch_then_deleted,
    seed.test_failed_batch_with_successful_retry,
    seed.test_failed_batch_with_unsuccessful_retry,
]


@pytest.fixture
def enforced(backend: str, request: pytest.FixtureRequest, tmp_path: Path,
             smtp: SmtpServer) -> Iterator[Harness]:
    """A Harness on either backend (as conftest's world_and_harness), with a signed repo."""
    keys = Keyring(tmp_path / "keys")
    repo = SignedRepo(tmp_path / "repo", keys)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy_doc(keys, "enforce"))
    policy = load_policy(policy_file)
    assert policy.mode == Mode.ENFORCE
    world: Any
    extra: dict[str, Any] = {}
    if backend == "local":
        world = LocalWorld(request.getfixturevalue("payloads"))
    else:
        cp = request.getfixturevalue("k8s_cluster")
        api = cp.api_client()
        world = KubeWorld(api, request.getfixturevalue("k8s_namespace"))
        extra = {"backend": "kubernetes", "namespace": world.ns,
                 "kubeconfig": str(cp.kubeconfig), "leader_election": False}
    repo.write("profiles/test.yaml", profile_doc(world.prefix))
    repo.commit("admin: the test profile", who=ADMIN)
    h = Harness(repo, tmp_path / "state", smtp.hostport, access_policy=policy, **extra)
    h.world = world
    try:
        yield h
    finally:
        h.close()
        world.close()
        if backend == "kubernetes":
            api.close()


@pytest.mark.parametrize("story", STORIES, ids=[s.__name__ for s in STORIES])
def test_seed_story_in_enforce_mode(story: Callable[[Harness, SmtpServer], None],
                                    enforced: Harness, smtp: SmtpServer) -> None:
    story(enforced, smtp)
    state = enforced.store.load_sync_state()
    assert state.access_refusals == {}
    assert state.access_held == {}


def test_the_same_story_unsigned_is_refused(enforced: Harness, smtp: SmtpServer) -> None:
    """The check above can fail: the admin's restart, unsigned, does not happen."""
    assert isinstance(enforced.repo, SignedRepo)
    seed.run_to_first_report(enforced, smtp, fail_third=True)
    enforced.repo.unsigned.add(ADMIN[1])
    enforced.repo.edit_batch(seed.BATCH, restarts={"job3": 1})
    enforced.sync()
    enforced.reconcile()
    assert enforced.attempts("maps")["job3"] == 1
    [(path, [refusal])] = enforced.store.load_sync_state().access_refusals.items()
    assert (path, refusal["signer"], refusal["field"]) == (seed.BATCH, "unsigned",
                                                           "spec.restarts")
