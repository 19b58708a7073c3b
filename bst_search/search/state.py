"""A sweep's identity and its lease, kept in shared state so any head can resume it.

The identity (sweep id, data and fold fingerprints, the space's content hash, the arguments
that must not change and the Tune experiments the sweep is made of) is a user attribute of
the Optuna study, which lives in the shared database (PostgreSQL on a cluster). It is
written once the Tuner runs, so a start that fails earlier (no cluster, no bucket) leaves
nothing behind that would block a fresh run or pretend to be resumable.

The lease is a row in a small table of that same database: a driver owns a sweep while its
row is fresh; a heartbeat renews it. A second live driver is refused; a driver that died
(SIGKILL, a lost head) is taken over once its lease expires, or at once when it ran on this
machine and its process is gone. A driver that finds its lease gone (it stalled past the TTL
and another driver took over, or the database stayed unreachable past the TTL) stops: the
heartbeat calls ``on_lost``, and :meth:`Lease.held` lets every write check it first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bst_search.search.space import SearchSpace

IDENTITY_ATTR = "bst.identity"
LEASE_TTL_ENV = "BST_LEASE_TTL_S"
# what a resumed sweep must share with the original, with the flag that sets each
FIXED_ARGS = {"folds": "--folds", "seed": "--seed", "sampler": "--sampler", "concurrency": "--concurrency",
              "scheduler": "--scheduler", "cpus_per_trial": "--cpus-per-trial",
              "gpus_per_trial": "--gpus-per-trial", "tracking_uri": "--tracking-uri",
              "tune_storage": "--tune-storage"}


class SweepStateError(RuntimeError):
    """A sweep cannot be started or resumed as asked; the message says why and what to do."""


def space_hash(space: SearchSpace) -> str:
    """Content hash of a search space: what it samples and how, not where its file lies."""
    data = {k: v for k, v in dataclasses.asdict(space).items()
            if not k.startswith("_") and k not in ("source", "description", "base")}
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def changes(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a sweep's stored identity and a resume request, by name."""
    out = []
    if stored["space_hash"] != current["space_hash"]:
        out.append(f"the search space ({stored.get('space_source')} had content hash "
                   f"{stored['space_hash']}, {current.get('space_source')} has {current['space_hash']})")
    for k, v in stored["fingerprints"].items():
        if current["fingerprints"].get(k) != v:
            out.append(f"the data ({k} {v} -> {current['fingerprints'].get(k)})")
    for k, flag in FIXED_ARGS.items():
        if stored["args"].get(k) != current["args"].get(k):
            out.append(f"{flag} ({stored['args'].get(k)} -> {current['args'].get(k)})")
    if current["trials"] < stored["trials"]:
        out.append(f"--trials ({stored['trials']} -> {current['trials']}: a sweep can grow, not shrink)")
    return out


def read_identity(storage: Any, study_name: str) -> dict[str, Any] | None:
    """The identity of the sweep whose study is ``study_name``, or None (no study, or a
    study left by a start that failed before the Tuner ran)."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None
    raw = study.user_attrs.get(IDENTITY_ATTR)
    return json.loads(raw) if raw else None


def write_identity(storage: Any, study_name: str, identity: dict[str, Any]) -> None:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    study.set_user_attr(IDENTITY_ATTR, json.dumps(identity, sort_keys=True))


def discard_failed_start(storage: Any, study_name: str) -> bool:
    """Delete a study that has no identity (its start failed before the Tuner ran)."""
    import optuna

    try:
        optuna.delete_study(study_name=study_name, storage=storage)
        return True
    except KeyError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """One live driver per sweep: a row (key, owner, host, pid, expires) in the study's
    database, taken and renewed with compare-and-set updates."""

    def __init__(self, url: str, key: str, ttl_s: float | None = None) -> None:
        import sqlalchemy as sa

        self.key = key
        self.ttl = float(ttl_s if ttl_s is not None else os.environ.get(LEASE_TTL_ENV, "60"))
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        meta = sa.MetaData()
        self.table = sa.Table(
            "bst_sweep_lease", meta,
            sa.Column("key", sa.String(512), primary_key=True),
            sa.Column("owner", sa.String(256), nullable=False),
            sa.Column("host", sa.String(256), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("expires", sa.Float, nullable=False),
            sa.Column("since", sa.Float, nullable=True))
        meta.create_all(self.engine, checkfirst=True)
        if "since" not in {c["name"] for c in sa.inspect(self.engine).get_columns("bst_sweep_lease")}:
            with self.engine.begin() as c:  # a table made before leases said since when
                c.execute(sa.text("ALTER TABLE bst_sweep_lease ADD COLUMN since FLOAT"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the heartbeat and held() renew one at a time
        self._renewed = -float("inf")  # time.monotonic() of the last successful renewal
        self.lost = False
        self.taken_by: str | None = None  # who holds it after this driver lost it

    def acquire(self) -> None:
        """Take the lease or raise :class:`SweepStateError` naming its live holder."""
        import sqlalchemy as sa

        t = self.table
        now = time.time()
        mine = {"owner": self.owner, "host": self.host, "pid": self.pid, "expires": now + self.ttl,
                "since": now}
        with self.engine.begin() as c:
            row = c.execute(sa.select(t).where(t.c.key == self.key)).first()
            if row is None:
                try:
                    c.execute(t.insert().values(key=self.key, **mine))
                    self._renewed = time.monotonic()
                    return
                except sa.exc.IntegrityError:
                    row = None
            elif (row.owner == self.owner or row.expires < now
                  or (row.host == self.host and not _alive(row.pid))):
                done = c.execute(t.update().where(t.c.key == self.key, t.c.owner == row.owner)
                                 .values(**mine))
                if done.rowcount == 1:
                    self._renewed = time.monotonic()
                    return
        with self.engine.connect() as c:
            row = c.execute(sa.select(t).where(t.c.key == self.key)).first()
        left = f"; its lease expires in {row.expires - time.time():.0f}s" if row else ""
        holder = f"{row.host} pid {row.pid}" if row else "another driver"
        raise SweepStateError(
            f"sweep {self.key!r} is being driven by {holder}{left}. One driver per sweep: stop "
            f"that one, or if it is gone, run --resume again once its lease has expired")

    def holder(self) -> str:
        """Who holds the sweep's lease now: host, pid and since when, or that nobody does."""
        import sqlalchemy as sa

        t = self.table
        with self.engine.connect() as c:
            row = c.execute(sa.select(t).where(t.c.key == self.key)).first()
        if row is None:
            return "nobody (the lease row is gone)"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.since)) if row.since else "?"
        return f"host {row.host} pid {row.pid} (since {since})"

    def renew(self) -> bool:
        """Extend the lease; False, and ``lost``, when another driver holds it now."""
        t = self.table
        with self._lock:
            if self.lost:
                return False
            with self.engine.begin() as c:
                done = c.execute(t.update().where(t.c.key == self.key, t.c.owner == self.owner)
                                 .values(expires=time.time() + self.ttl))
            if done.rowcount == 1:
                self._renewed = time.monotonic()
                return True
        self._lose()
        return False

    def held(self) -> bool:
        """Whether this driver may still write: renewed within half the TTL, or renewed now.
        A driver that was stalled (SIGSTOP, a frozen VM) finds out here, before its next
        write, rather than at the heartbeat's next beat."""
        if self.lost:
            return False
        if time.monotonic() - self._renewed < self.ttl / 2:
            return True
        try:
            return self.renew()
        except Exception:  # the database is unreachable: held until the TTL has passed
            if time.monotonic() - self._renewed > self.ttl:
                self._lose()
            return not self.lost

    def _lose(self) -> None:
        with self._lock:
            if self.lost:
                return
            self.lost = True
        try:
            self.taken_by = self.holder()
        except Exception as e:  # the database is gone: say so
            self.taken_by = f"unknown (the lease database is unreachable: {type(e).__name__})"
        if self.on_lost is not None:
            self.on_lost(self)

    on_lost: Callable[[Lease], None] | None = None  # called once, from the thread that found out

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.ttl / 4) and not self.lost:
                self._beat()

        self._thread = threading.Thread(target=beat, name="bst-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        try:
            self.renew()
        except Exception:  # a database hiccup: the next beat tries again; held() counts the TTL
            if time.monotonic() - self._renewed > self.ttl:
                self._lose()

    def release(self) -> None:
        """Give the lease up (only if it is still this driver's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        t = self.table
        try:
            with self.engine.begin() as c:
                c.execute(t.delete().where(t.c.key == self.key, t.c.owner == self.owner))
        finally:
            self.engine.dispose()


class LeaseFence:
    """Whether a driver's lease is still its own, asked from another process (the MLflow
    writer, before it closes a run): picklable, it connects on first use."""

    def __init__(self, url: str, key: str, owner: str) -> None:
        self.url, self.key, self.owner = url, key, owner
        self._engine: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_engine": None}

    def holds(self) -> bool:
        import sqlalchemy as sa

        self._engine = self._engine or sa.create_engine(self.url, pool_pre_ping=True)
        with self._engine.connect() as c:
            row = c.execute(sa.text("SELECT owner FROM bst_sweep_lease WHERE key = :k"),
                            {"k": self.key}).first()
        return row is not None and row[0] == self.owner
