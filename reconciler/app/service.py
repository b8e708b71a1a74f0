"""One reconciler process: Git sync, controller, job runner and outbox, in passes.

A pass is: fetch and apply the branch (within `git_timeout`) when a sync is due, or apply
the next slice of a large commit (`CommitApply`: its first batches run while the rest are
read, and no fetch comes until it is whole); let the backend move jobs along; take each
batch that can change one step; ask the mailer for a round. As Flux and Argo CD poll, the
loop syncs on its first pass, every `interval`, and when a webhook or `batchq
reconcile-now` asks: a pass woken by a finished job or download does not fetch. Which
batches a pass steps is the controller's work queue (see `Controller.reconcile_all`);
every `resync` seconds, and after a sync that changed something, it walks them all.
Nothing slow runs inside a pass: email goes out from the mailer's thread, and remote
manifests are downloaded in threads of their own, so a peer that hangs delays only its own
report or batch.
`run_until_idle` repeats passes until nothing can progress without a new commit;
`run_forever` also wakes at once when a local job ends, a download or delivery finishes,
or a webhook asks for a sync. Between two passes that progress, the local runner alone
starts the Jobs made ahead as others exit, while there are some for every slot, for up to
BATCH_PERIOD_SECONDS (`between_passes`). A heartbeat file records when the last pass and
the last sync finished, so the web page can show the sync time and `/healthz` can fail
when the loop stalls.
A full disk under the state dir ends a pass as one NoSpaceLeft (support/nospace.py), kept
for `batchq status` when the store can still take it; `run_forever` says so once and
retries every interval, and the first pass after space returns clears it.
On Kubernetes `run_forever` acts only while it holds the Lease: the elector renews it from
a thread of its own, every write and every email asks `may_act` first, and a pass that
loses the Lease (or is asked to stop) ends before its next write (NotLeader). Any other
failure of a pass (the API server down or restarting) is logged in one line and the pass
is tried again after 1 s, doubling up to 30 s, as client-go's controllers do; `run` never
exits for it. On stop the Lease is released, so the stand-by takes over at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.app.statelock import StateLock
from reconciler.control.controller import JOBS_AHEAD_PER_SLOT, Controller
from reconciler.control.downloads import ManifestDownloads
from reconciler.control.mailer import Mailer
from reconciler.control.notify import RetryPolicy
from reconciler.control.smtp import Relay
from reconciler.domain.states import BatchState
from reconciler.source.access import Outcome, authorize
from reconciler.source.gitrepo import GitSource, SourceError, SyncResult
from reconciler.source.sync import SLICE_FILES, CommitApply, RepoState, load_repo_state
from reconciler.spec.policy import AccessPolicy, Mode, PolicyFile
from reconciler.store.backends import BackendSettings, open_backend, store_factory
from reconciler.store.base import Event, NotLeader, Store
from reconciler.support import failpoints
from reconciler.support.heartbeat import Heartbeat, read_heartbeat
from reconciler.support.nospace import NoSpaceLeft, is_no_space, no_space_is_fatal
from reconciler.support.redaction import redact_text

log = logging.getLogger(__name__)
FIRST_RETRY, MAX_RETRY = 1.0, 30.0  # seconds after a failed pass, doubling (as client-go)
# After a pass that progressed, while the local runner has Jobs made ahead for every slot it
# alone records the exits and starts the next ones, and the next pass comes when fewer are
# left or this long after, whichever is first (`between_passes`), as the Kubernetes
# Job controller batches a Job's pod events for a second (syncJobBatchPeriod)
BATCH_PERIOD_SECONDS = 0.25
# an exit that wakes the loop between passes is recorded this long after, with the exits
# that came meanwhile: one round's transaction for several (the Job controller's batching)
EXIT_GATHER_SECONDS = 0.002


@dataclass
class Settings:
    """Where desired state comes from, where observed state goes, how to tell people."""

    repo: str
    branch: str = "main"
    state_dir: Path = field(default_factory=lambda: Path(".batchq"))
    backend: str = "local"  # local | kubernetes
    namespace: str = "batchq"
    smtp: str | None = None  # HOST:PORT; None: write .eml files to state_dir/outbox
    interval: float = 10.0  # seconds between passes when nothing wakes the loop
    resync: float | None = None  # seconds between full walks; None: 10 x interval, >= 30 s
    kubeconfig: str | None = None
    storage_claim: str = ""  # kubernetes: the PVC Jobs mount (filesystem); "": none
    s3_secret: str = "batchq-s3"  # kubernetes: the Secret with the S3 credentials
    kube_concurrency: int = 8  # kubernetes: Job creates in flight at once
    kube_qps: float = 20.0  # kubernetes: API writes a second, on average (<= 0: no limit)
    kube_burst: int = 30  # kubernetes: API writes at once before the rate applies
    leader_election: bool = True  # kubernetes: only the Lease holder acts
    identity: str | None = None  # this candidate's name in the Lease (default host-pid)
    lease_seconds: float = 15.0  # a silent leader is replaced after this long
    renew_deadline: float = 10.0  # a leader that could not renew this long stops acting
    retry_period: float = 2.0  # how often the Lease is renewed, or tried for
    git_timeout: float = 120.0  # overall deadline of one `git fetch`
    file_roots: tuple[str, ...] = ()  # host dirs absolute file: URLs may name (operator's)
    storage_root: Path | None = None  # profiles' storage paths live under it (state/storage)
    smtp_timeout: float = 120.0  # overall deadline of one SMTP transaction
    smtp_backoff: float = 5.0  # first wait before a deferred email is tried again (doubles)
    smtp_max_age: float = 5 * 24 * 3600.0  # still deferred this long after queueing: give up
    message_id_domain: str | None = None  # None: a random one, made once and kept
    smtp_security: str = "none"  # none | starttls | tls: how the relay is reached
    smtp_user: str | None = None  # AUTH as this user (the password never comes from argv)
    smtp_password: str | None = field(default=None, repr=False)
    smtp_ca_file: str | None = None  # the CA the relay's certificate must chain to
    site_url: str | None = None  # the web site's base URL: reports link the batch page
    access_policy: AccessPolicy = field(default_factory=AccessPolicy)  # who may change what
    access_policy_file: str | None = None  # where it was read: read again when it changes
    job_nice: int = 10  # local: jobs run this much nicer than the reconciler (0: as nice)
    # local: Jobs made ahead per slot, each started as soon as a slot frees; enough to last
    # from one pass to the next when jobs are short (bench/README.md, "fifth round")
    jobs_ahead: int = JOBS_AHEAD_PER_SLOT

    def resync_seconds(self) -> float:
        """How often every batch is stepped, whatever changed (controller-runtime's
        SyncPeriod): a safety net for a change no event announced."""
        return self.resync if self.resync is not None else max(10 * self.interval, 30.0)

    def backend_settings(self) -> BackendSettings:
        return BackendSettings(backend=self.backend, state_dir=self.state_dir,
                               namespace=self.namespace, kubeconfig=self.kubeconfig,
                               storage_claim=self.storage_claim, s3_secret=self.s3_secret,
                               kube_concurrency=self.kube_concurrency, kube_qps=self.kube_qps,
                               kube_burst=self.kube_burst)

    def relay(self) -> Relay | None:
        """The SMTP relay as configured; None: reports go to `outbox/` as files."""
        if self.smtp is None:
            return None
        return Relay.parse(self.smtp, self.smtp_security, user=self.smtp_user,
                           password=self.smtp_password, ca_file=self.smtp_ca_file)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(timeout=self.smtp_timeout, first_backoff=self.smtp_backoff,
                           max_backoff=max(self.smtp_backoff, RetryPolicy.max_backoff),
                           max_age=self.smtp_max_age)


@dataclass
class PendingSync:
    """A commit fetched (and judged by the access policy), being applied a slice a pass."""

    result: SyncResult
    access: Outcome | None
    commit: CommitApply | None = None  # made by the first slice


class Reconciler:
    """Runs passes; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.lock = StateLock(settings.state_dir)
        self.lock.acquire()  # StateDirLocked: another reconciler acts on this state dir
        try:
            self._open(settings)
        except BaseException:  # a reconciler that failed to start holds nothing
            self.lock.release()
            raise

    def _open(self, settings: Settings) -> None:
        self.source = GitSource(settings.repo, settings.branch, settings.state_dir / "git",
                                fetch_timeout=settings.git_timeout)
        for leftover in self.source.clear_stale_locks():
            log.warning("removed %s, left by a process that was killed", leftover)
        self.last_sync_error = ""
        backend = open_backend(settings.backend_settings())
        self.store: Store = backend.store
        self.runner = backend.runner
        if self.runner is not None:
            self.runner.nice = settings.job_nice
        self.wake = backend.wake
        self.elector: Any = None
        self._electing = False  # run_forever started the elector: acting needs the Lease
        self._stopping: threading.Event = threading.Event()
        if backend.api is not None and settings.leader_election:
            from reconciler.store.kubernetes.leader import LeaderElector, LeaseTimings

            self.elector = LeaderElector(
                backend.api, settings.namespace, identity=settings.identity,
                timings=LeaseTimings(settings.lease_seconds, settings.renew_deadline,
                                     settings.retry_period),
                on_change=self.wake.set,
                facts=lambda: read_heartbeat(settings.state_dir))
            if backend.fence is not None:
                backend.fence(self.may_act)
        self.downloads = ManifestDownloads(on_done=self.wake.set)
        self.controller = Controller(
            self.store, storage_root=settings.storage_root or settings.state_dir / "storage",
            file_roots=settings.file_roots, downloads=self.downloads,
            message_id_domain=settings.message_id_domain, site_url=settings.site_url,
            jobs_ahead_per_slot=settings.jobs_ahead if self.runner is not None else 0,
            between_steps=self.runner.tick_if_exited if self.runner is not None else None)
        open_mail_store, shared = store_factory(settings.backend_settings(), shared=self.store)
        self.mailer = Mailer(open_mail_store, owns_store=not shared, smtp=settings.relay(),
                             outbox_dir=settings.state_dir / "outbox",
                             policy=settings.retry_policy(), on_round=self.wake.set,
                             may_send=self.may_act)
        self.heartbeat = Heartbeat(settings.state_dir)
        self.syncs = 0  # syncs made by this process (the heartbeat shows it)
        self.passes = 0  # passes made by this process (the heartbeat shows it)
        self._storage_error_clear = False  # known to show no storage error (see _storage_error)
        self._next_sync = 0.0  # monotonic time the loop syncs again; 0: on its next pass
        self._sync_asked = threading.Event()  # a webhook asked for a sync now
        self._next_walk = 0.0  # monotonic time of the next full walk of every batch
        self._repo: RepoState | None = None  # the repo-wide settings of the last sync
        self._applying: PendingSync | None = None  # a commit fetched, not yet all applied
        self._touched: set[str] = set()  # batches its slices changed, for the next pass
        self.policy_file = (PolicyFile(settings.access_policy_file, settings.access_policy)
                            if settings.access_policy_file else None)

    def access_policy(self) -> AccessPolicy:
        """The access policy in force: its file's newest valid version."""
        if self.policy_file is None:
            return self.settings.access_policy
        return self.policy_file.current()

    def may_act(self) -> bool:
        """May this process write or send now? Always, without leader election; with it,
        only while `run_forever` holds the Lease and is not stopping."""
        if self._stopping.is_set():
            return False
        return not self._electing or self.elector.is_leader()

    def close(self) -> None:
        try:
            if self.elector is not None:
                self.elector.stop(release=True)  # the stand-by takes over at once
            with contextlib.suppress(OSError):  # the last passes' figures, before the lock goes
                self.heartbeat.flush()
            self.mailer.close()  # after the message in flight, if any: it is recorded
            self.store.close()
        finally:
            self.lock.release()

    # --- passes
    def request_sync(self) -> None:
        """A webhook asked for a sync: the loop wakes and its next pass fetches."""
        self._sync_asked.set()
        self.wake.set()

    def sync_due(self) -> bool:
        """Is a fetch due: never synced, `interval` passed since the last, or asked for?"""
        return (self._repo is None or time.monotonic() >= self._next_sync
                or self._sync_asked.is_set())

    def sync(self) -> RepoState:
        """Fetch and apply the branch, whole; the repo-wide settings now in force."""
        repo = self._sync_step(fetch=True)
        while self._applying is not None:
            repo = self._sync_step(fetch=False)
        return repo

    def _sync_step(self, fetch: bool) -> RepoState:
        """Fetch the branch and apply the first slice of what changed (`fetch`), or the
        next slice of the commit being applied (`CommitApply`: a large commit's first
        batches run while the rest are applied, a slice a pass); the settings in force. A
        slice that fails drops the rest: the next pass fetches and applies them again."""
        if fetch:
            self._sync_asked.clear()
            self._next_sync = time.monotonic() + self.settings.interval
            self.syncs += 1
            self._applying = self._fetch()
            if self._applying is None:  # the fetch failed: shown, nothing changes
                self._repo = load_repo_state(self.store)
                return self._repo
        try:
            repo = self._apply_slice()
        except BaseException:
            self._applying, self._next_sync = None, 0.0
            raise
        self._repo = repo
        if self._applying is not None:
            failpoints.hit("after-slice")  # a slice committed, the commit not yet whole
        return repo

    def _fetch(self) -> PendingSync | None:
        """The branch fetched and judged by the access policy, to apply; None when it could
        not be fetched (the error is shown)."""
        policy = self.access_policy()
        before = self.store.load_sync_state()
        last = before.synced_commit
        if policy.mode == Mode.OFF and before.access_held:
            last = None  # the policy was turned off: read the whole tree, every file as is
        try:
            result = self.source.sync(last)
            access = self._authorize(policy, last, result)
        except SourceError as exc:
            if is_no_space(exc):  # the mirror is in the state dir: not the remote's fault
                raise
            self.last_sync_error = redact_text(str(exc))
            log.error("%s", self.last_sync_error)
            state = self.store.load_sync_state()
            state.sync_error = self.last_sync_error
            self.store.save_sync_state(state)
            return None
        self.last_sync_error = ""
        return PendingSync(access.result if access is not None else result, access)

    def _apply_slice(self) -> RepoState:
        """Apply the next slice of the commit fetched (the first makes its CommitApply);
        with the last, what the whole commit decides and the synced-commit marker. On
        SQLite a slice is one transaction, and the marker lands with the last: a kill
        never leaves the marker ahead of the batches it stands for."""
        pending = self._applying
        assert pending is not None
        result, access = pending.result, pending.access
        with self.store.transaction():
            if pending.commit is None and (result.changed or result.listed):
                pending.commit = CommitApply(self.store, result)
                # a commit arrived: every batch is looked at, under its profiles and queue
                # (the first slice applies them); a later slice's batches are `_touched`
                self._next_walk = 0.0
            commit = pending.commit
            if commit is not None:
                self._touched |= commit.apply_slice(SLICE_FILES)
                if not commit.done:
                    return commit.repo_state()
                repo = commit.finish()
            else:
                repo = load_repo_state(self.store)
            if access is not None and access.new_refusals:
                self._refusal_events(access)
            state = self.store.load_sync_state()
            # what the access policy held back, before the commit that stands for it (on
            # Kubernetes each write stands alone: re-judging from the old commit on top of
            # the new held versions changes nothing, the reverse would lose them)
            if access is not None:
                state.access_held, state.access_refusals = access.held, access.refusals
            else:  # mode off: nothing is held back or refused
                state.access_held, state.access_refusals = {}, {}
            self.store.save_sync_state(state)
            state.synced_commit, state.sync_error = result.head, ""
            self.store.save_sync_state(state)
        self._applying = None
        if self.store.repair_drift():  # what was changed by hand goes back to what Git says
            self._next_walk = 0.0
        self.heartbeat.beat(sync=True, head=result.head, counters={"syncs": self.syncs})
        failpoints.hit("after-sync")
        return repo

    def _authorize(self, policy: AccessPolicy, last: str | None,
                   result: SyncResult) -> Outcome | None:
        """Each commit since `last` judged by the access policy (None when it is off)."""
        if policy.mode == Mode.OFF:
            return None
        state = self.store.load_sync_state()
        if last == result.head:  # nothing new: what was held and refused stays as it is
            return Outcome(result, state.access_held, state.access_refusals)
        live = {b.source_path for b in self.store.list_batches()
                if b.status.state != BatchState.DELETED}
        return authorize(self.source, policy, last, result, state, live,
                         timeout=self.settings.git_timeout)

    def _refusal_events(self, access: Outcome) -> None:
        """Each refusal of a batch's file on that batch's timeline (the page shows it)."""
        by_path = {b.source_path: b.name for b in self.store.list_batches()
                   if b.status.state != BatchState.DELETED}
        for refusal in access.new_refusals:
            if refusal.path in by_path:
                self.store.add_event(Event(by_path[refusal.path], time.time(), "AccessRefused",
                                           refusal.line(), refusal.commit))

    def _storage_error(self, error: str) -> None:
        """Show (or, with "", clear) the state dir's storage error. Clearing reads the
        store only while an error may be shown: once each process, then after a failure."""
        if not error and self._storage_error_clear:
            return
        self._storage_error_clear = False  # until the write below is known to have landed
        state = self.store.load_sync_state()
        state.storage_error = error
        self.store.save_sync_state(state)
        self._storage_error_clear = not error

    def tick_jobs(self) -> bool:
        """Let the local runner start and finish jobs (the cluster does it on Kubernetes)."""
        return self.runner.tick() if self.runner is not None else False

    def between_passes(self, stop: threading.Event | None = None) -> None:
        """Between a pass that progressed and the next: while the local runner has Jobs
        made ahead for every slot, it alone records each exit and starts the next Job at
        once, and the next pass comes when fewer are left, BATCH_PERIOD_SECONDS after this
        one at the latest, or at once for a sync asked for or a stop. The next pass then
        observes several exits of a batch in one step: at 1,000 batches of 10, a pass
        came every 4 jobs and each step observed about one change. An exit is recorded
        EXIT_GATHER_SECONDS after it woke the loop, with those that came meanwhile: at
        1,000 batches of 10 most rounds recorded one exit, each in a transaction of its
        own, and the 2 ms a job waits more leave the 2 cores busy with the other slots."""
        if self.runner is None:
            return
        until = time.monotonic() + BATCH_PERIOD_SECONDS
        while self.runner.jobs_ahead_for_every_slot():
            left = until - time.monotonic()
            if left <= 0 or self._sync_asked.is_set() or (stop is not None and stop.is_set()):
                return
            if self.wake.wait(left):
                time.sleep(EXIT_GATHER_SECONDS)
                self.wake.clear()
                self.tick_jobs()

    def reconcile(self, repo: RepoState) -> bool:
        """Step the batches that can change; every batch on the first pass and every
        `resync` seconds (or when the last sync changed something)."""
        if self.runner is not None:
            self.runner.parallel = repo.queue.max_active_jobs
        full = time.monotonic() >= self._next_walk
        if full:
            self._next_walk = time.monotonic() + self.settings.resync_seconds()
        touched, self._touched = self._touched, set()
        try:
            return self.controller.reconcile_all(repo, str(self.source.mirror), full=full,
                                                 touched=touched)
        except BaseException:  # the changes it took from the store may not all be stepped:
            self._next_walk = 0.0  # the next pass walks every batch
            raise

    def deliver(self) -> int:
        """A delivery round, waited for: how many messages went out (step-driven tests)."""
        return self.mailer.deliver_now()

    def run_pass(self, sync: bool = True) -> bool:
        """One pass; True if anything changed. NoSpaceLeft when the state dir is full.
        `sync` False: no fetch, the settings of the last sync (the loop, when none is
        due); a pass before any sync syncs all the same."""
        try:
            with no_space_is_fatal(self.settings.state_dir):
                progressed = self._pass(sync)
                self._storage_error("")  # a write only after a full disk
        except NoSpaceLeft as exc:
            with contextlib.suppress(Exception):  # best effort: the store may be what is full
                self._storage_error(str(exc))
            raise
        return progressed

    def _pass(self, sync: bool) -> bool:
        started = time.monotonic()
        if self._applying is not None:  # a large commit: its next slice, then the steps
            repo = self._sync_step(fetch=False)
        elif sync or self._repo is None:
            repo = self._sync_step(fetch=True)
        else:
            repo = self._repo
        progressed = self._applying is not None  # slices are left: the next pass applies one
        progressed |= self.tick_jobs()
        progressed |= self.reconcile(repo)
        progressed |= self.tick_jobs()
        self.mailer.kick()
        self.mailer.raise_if_no_space()  # a round found the state dir too full to record
        self.passes += 1
        last = self.controller.last_pass
        self.heartbeat.beat(interval=self.settings.interval, duration=time.monotonic() - started,
                            counters={"passes": self.passes, "steps": self.controller.steps,
                                      "lastPassSteps": last.steps,
                                      "lastPassFull": int(last.full)})
        return progressed

    def run_once(self) -> bool:
        """One pass, then what it started outside the pass: manifest downloads are waited
        for and picked up by a second pass, and the email due is delivered (each within
        its own deadline), so `reconcile --once` run again and again always gets on. A
        large commit is applied whole: a pass for each slice."""
        progressed = self._pass_applying_whole()
        if self.downloads.wait():
            progressed |= self._pass_applying_whole()
        self.mailer.deliver_now()
        return progressed

    def _pass_applying_whole(self) -> bool:
        """A pass, and one more for each slice left of a commit it began to apply."""
        progressed = self.run_pass()
        while self._applying is not None:
            progressed |= self.run_pass(sync=False)
        return progressed

    def busy(self) -> bool:
        """Is something still moving that needs no new commit (a commit's slices left to
        apply, jobs, manifest downloads, email due now, a batch about to be tried again)?"""
        if (self._applying is not None or self.store.count_active_jobs()
                or self.downloads.busy() or self.controller.backoff.retrying()):
            return True
        return bool(self.store.pending_outbox(time.time()))

    def run_until_idle(self, timeout: float = 3600.0,
                       on_pass: Callable[[Reconciler], None] | None = None) -> int:
        """Pass until nothing can progress without a new commit; return passes made."""
        deadline = time.monotonic() + timeout
        passes = 0
        while time.monotonic() < deadline:
            self.wake.clear()
            # the first pass syncs: what was committed before the call is seen
            progressed = self.run_pass(sync=passes == 0 or self.sync_due())
            passes += 1
            if on_pass is not None:
                on_pass(self)
            if progressed:
                self.between_passes()
                continue
            if not self.busy():
                return passes
            self.wake.wait(0.5)
        raise TimeoutError(f"not idle after {timeout:.0f} s")

    def run_forever(self, stop: threading.Event) -> None:
        """Passes until `stop` is set (see the module docstring); then the Lease is let go."""
        self._stopping = stop  # setting it stops acting at once, even mid-pass
        if self.elector is not None:
            self._electing = True
            self.elector.start()
        try:
            self._loop(stop)
        finally:
            if self.elector is not None:
                self.elector.stop(release=True)

    def _loop(self, stop: threading.Event) -> None:
        full = ""  # the NoSpaceLeft last told, so a full disk is logged once, not every pass
        failures = 0  # passes failed in a row: the wait before the next one doubles
        while not stop.is_set():
            self.wake.clear()
            if self.elector is not None and not self.elector.is_leader():
                # alive, standing by; the elector wakes the loop when it gets the Lease
                self._next_sync = self._next_walk = 0.0  # then: a sync and a full walk
                self._applying = None  # (the leader may have moved on from that commit)
                self._storage_error_clear = False  # and a look at what another leader left
                self.heartbeat.beat(interval=self.settings.interval, duration=0.0)
                self._sleep(self.elector.timings.retry_period, stop)
                continue
            try:
                progressed = self.run_pass(sync=self.sync_due())
                if full:
                    log.warning("space is back in the state dir %s", self.settings.state_dir)
                    full = ""
                if failures:
                    log.warning("reconcile passes succeed again after %d failed", failures)
                    failures = 0
                if progressed:
                    self.between_passes(stop)
            except NoSpaceLeft as exc:  # retried every interval until space returns
                if str(exc) != full:
                    log.error("%s", exc)
                    full = str(exc)
                progressed = False
            except NotLeader:  # lost the Lease or stopping: the pass ended between writes
                if not stop.is_set():
                    log.warning("the Lease was lost during a pass: it stopped before its"
                                " next write")
                continue
            except Exception as exc:  # the loop must outlive any failure; /healthz shows stalls
                failures += 1
                delay = min(FIRST_RETRY * 2 ** (failures - 1), MAX_RETRY)
                log.error("reconcile pass failed (%d in a row; next try in %g s): %s",
                          failures, delay, redact_text(f"{type(exc).__name__}: {exc}"),
                          exc_info=failures == 1)
                self._sleep(delay, stop)
                continue
            if not progressed:
                wait = self.settings.interval if full or not self.busy() else 0.5
                self._sleep(wait, stop)

    def _sleep(self, seconds: float, stop: threading.Event) -> None:
        """Wait for a wake-up: a job ended, a watch event, or a webhook asked for a sync
        (in-process, or as the `sync-requested` file a separate `batchq web` leaves)."""
        request = self.settings.state_dir / "sync-requested"
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            if request.exists():
                request.unlink(missing_ok=True)
                self._sync_asked.set()
                return
            if self.wake.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                return
