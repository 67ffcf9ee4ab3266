"""JobStore over a real moto server: conditional transitions, claims, races."""

import threading
import uuid

import pytest

from chalicelib.jobs.models import JobStatus, JobType
from chalicelib.jobs.record import Job
from chalicelib.jobs.store import JobExists, JobStore, TransitionConflict

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def new_job(owner: str = "o1") -> Job:
    return Job(
        id=str(uuid.uuid4()), type=JobType.CSM, params={"text": "hi", "temperature": 0.9},
        status=JobStatus.QUEUED, owner=owner, created_at=1.5, complete_by=3601.5, max_time=1200,
        expires_at=999999,
    )


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(ctx, clock):
    return JobStore(ctx.dynamodb, ctx.settings.jobs_table, clock)


def test_create_get_round_trip(store):
    job = new_job()
    store.create(job)
    got = store.get(job.id)
    assert got.params == {"text": "hi", "temperature": 0.9}
    assert (got.status, got.owner, got.created_at, got.max_time) == (JobStatus.QUEUED, "o1", 1.5, 1200)
    with pytest.raises(JobExists) as info:
        store.create(job)
    assert info.value.existing.id == job.id


def test_terminal_state_is_final(store):
    job = new_job()
    store.create(job)
    store.transition(job.id, JobStatus.CANCELLED, fields={"error": "stop"})
    with pytest.raises(TransitionConflict) as info:
        store.transition(job.id, JobStatus.FAILED, fields={"error": "late"})
    assert info.value.current.status is JobStatus.CANCELLED
    assert store.get(job.id).error == "stop"


def test_success_requires_running(store):
    job = new_job()
    store.create(job)
    with pytest.raises(TransitionConflict):
        store.transition(job.id, JobStatus.SUCCESS)


def test_claim_then_takeover_only_after_lease_lapses(store, clock):
    job = new_job()
    store.create(job)
    claimed = store.claim(job.id, "w1", lease_seconds=60)
    assert (claimed.status, claimed.worker, claimed.attempts) == (JobStatus.RUNNING, "w1", 1)
    with pytest.raises(TransitionConflict):
        store.claim(job.id, "w2", lease_seconds=60)  # lease still live
    clock.now += 61
    taken = store.claim(job.id, "w2", lease_seconds=60)
    assert (taken.worker, taken.attempts) == ("w2", 2)
    assert taken.first_started_at == claimed.started_at
    # The old holder can neither renew nor finish any more.
    with pytest.raises(TransitionConflict) as info:
        store.renew_lease(job.id, "w1", 60)
    assert info.value.current.worker == "w2"
    with pytest.raises(TransitionConflict):
        store.transition(job.id, JobStatus.SUCCESS, worker="w1")
    done = store.transition(job.id, JobStatus.SUCCESS, worker="w2", fields={"result_text": "ok"})
    assert done.status is JobStatus.SUCCESS and done.finished_at == clock.now


def test_missing_job_conflicts_with_no_current(store):
    with pytest.raises(TransitionConflict) as info:
        store.transition(str(uuid.uuid4()), JobStatus.CANCELLED)
    assert info.value.current is None


@pytest.mark.parametrize("rounds", [5])
def test_race_two_updaters_exactly_one_wins(store, rounds):
    """A worker finishing and a client cancelling at the same moment: one wins, the
    loser gets a conflict, and the record holds only the winner's write."""
    for _ in range(rounds):
        job = new_job()
        store.create(job)
        store.claim(job.id, "w1", 60)
        barrier = threading.Barrier(2)
        outcomes: dict[str, str] = {}

        def attempt(name, target, **kw):
            barrier.wait()
            try:
                store.transition(job.id, target, fields={"error": name}, **kw)
                outcomes[name] = "won"
            except TransitionConflict:
                outcomes[name] = "lost"

        threads = [
            threading.Thread(target=attempt, args=("worker", JobStatus.FAILED), kwargs={"worker": "w1"}),
            threading.Thread(target=attempt, args=("client", JobStatus.CANCELLED), kwargs={"owner": "o1"}),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes.values()) == ["lost", "won"]
        winner = next(k for k, v in outcomes.items() if v == "won")
        final = store.get(job.id)
        assert final.error == winner
        assert final.status is (JobStatus.FAILED if winner == "worker" else JobStatus.CANCELLED)


def test_concurrent_claims_have_exactly_one_winner(store):
    """Eight workers claim one job at once, twenty times: one claim wins each time.
    (Plain moto server lets several conditional writes win; see infra/local/moto_server.py.)"""
    for _ in range(20):
        job = new_job()
        store.create(job)
        barrier = threading.Barrier(8)
        winners: list[str] = []

        def claim(name: str) -> None:
            barrier.wait()
            try:
                store.claim(job.id, name, 60)
                winners.append(name)
            except TransitionConflict:
                pass

        threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1
        final = store.get(job.id)
        assert (final.worker, final.attempts) == (winners[0], 1)
