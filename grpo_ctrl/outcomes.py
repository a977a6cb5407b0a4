"""The outcome store: a table of what greedy decoding gives for a (prompt, knob setting) pair, and of the features
the controller reads, keyed by content so that every run, rank, sweep job and evaluation that would compute the
same bits reads them instead.

Keys: the store is bound to one model fingerprint and one data-source fingerprint (`grpo_ctrl.fingerprint`); an
entry is keyed by the sample's id in that source, the knob values, and a `plan` digest (generation and scoring
settings plus the members of the chunk that computed it: batched rows can differ from other compositions in last
bits, so the composition is part of what determines them).

Kept in memory (the default, one run; feature vectors beyond MEMORY_FEATURES_MB are forgotten least recently used
first and recomputed, with the same bits, when asked again), or on disk with `rollout.store=DIR`: SQLite in WAL
mode (Python's own, well kept, crash-safe and multi-writer). A chunk lands in one transaction, so a process killed
mid-write leaves the store as before the chunk, and the chunk is computed again. Writers never overwrite (INSERT OR
IGNORE), and every writer reads back what the store holds, so two processes that raced on one chunk both continue
with the first one's bits. SQLite's locking needs a local disk (not NFS): on a cluster point it at node-local
storage.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np

SCHEMA = 1
DB_FILE = "outcomes.sqlite"
MEMORY_FEATURES_MB = 512  # a memory store forgets its least recently used feature vectors beyond this (recomputable)


def _set_wal(db: sqlite3.Connection, patience_s: float = 60.0) -> None:
    """Switch to WAL, waiting for other processes that open the same new store at once: changing the journal mode
    does not go through SQLite's busy timeout, it fails at once with "database is locked"."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class StoreError(ValueError):
    """An outcome store that cannot be used by this run (one line: what, where, how to fix)."""


@dataclass(frozen=True)
class Outcome:
    answer: str  # the extracted answer (`data.extract_answer` of the generated text)
    score: float  # the data's metric of the answer against the gold answers
    image_tokens: int
    prompt_tokens: int  # input length: <s> + image tokens + question
    generated_tokens: int  # EOS included
    ended_with_eos: bool
    gold_prob: float = float("nan")  # exp(mean token log-prob) of the most frequent gold answer (dense reward)


OUTCOME_FIELDS = [f.name for f in fields(Outcome)]
Key = tuple[str, str, str]  # (sample id, knobs, plan)


class OutcomeStore:
    """Outcomes and feature vectors by key; in memory when `path` is None, else in `path`/outcomes.sqlite.

    `binding` ({"model": ..., "data": ...} fingerprints) is written into a new store and must match an existing
    one; a mismatch raises StoreError naming what differs."""

    def __init__(self, path: str | Path | None = None, binding: dict | None = None):
        self.path = Path(path) if path else None
        self.binding = binding or {}
        self.computed = 0  # outcomes this process computed and wrote (reads are `read`)
        self.read = 0
        self._outcomes: dict[Key, Outcome] = {}  # the memory store (a disk store keeps nothing in memory)
        self._features: OrderedDict[Key, np.ndarray] = OrderedDict()
        self._feature_bytes = 0
        self._db = self._open() if self.path else None

    # ------------------------------------------------------------ opening
    def _open(self) -> sqlite3.Connection:
        where = f"rollout.store={self.path}"
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{where} is a file; point rollout.store at a directory (created if missing)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path / DB_FILE, timeout=600, isolation_level=None, check_same_thread=False)
            _set_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")  # one creator at a time: the first process writes the binding
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                db.executemany("INSERT INTO meta VALUES (?, ?)",
                               [("schema", str(SCHEMA)), *((k, json.dumps(v, sort_keys=True))
                                                           for k, v in self.binding.items())])
                db.execute(f"CREATE TABLE outcomes (sample TEXT, knobs TEXT, plan TEXT, "
                           f"{', '.join(OUTCOME_FIELDS)}, PRIMARY KEY (sample, knobs, plan)) WITHOUT ROWID")
                db.execute("CREATE TABLE features (kind TEXT, sample TEXT, plan TEXT, value BLOB, "
                           "PRIMARY KEY (kind, sample, plan)) WITHOUT ROWID")
            db.execute("COMMIT")
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{where}: {self.path / DB_FILE} cannot be opened as an outcome store ({err}); "
                             "delete it or use another directory") from None
        if meta:
            try:
                self._check(meta, where)
            except StoreError:
                db.close()  # a refused store leaves no open connection behind
                raise
        return db

    def _check(self, meta: dict, where: str) -> None:
        if meta.get("schema") != str(SCHEMA):
            raise StoreError(f"{where} was written by store schema {meta.get('schema')} (this grpo-ctrl reads "
                             f"{SCHEMA}); use a new directory")
        for name, value in self.binding.items():
            held = json.loads(meta[name]) if name in meta else None
            if held != value:
                parts = sorted(k for k in set(held or {}) | set(value) if (held or {}).get(k) != value.get(k))
                raise StoreError(f"{where} holds outcomes of another {name} (differs in: {', '.join(parts)}); "
                                 f"use a store directory per {name}, or delete this one")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ------------------------------------------------------------ outcomes
    def outcomes(self, keys: Iterable[Key]) -> dict[Key, Outcome]:
        """The stored outcomes among `keys` (missing keys are absent)."""
        keys = list(dict.fromkeys(keys))
        if self._db is None:
            found = {k: self._outcomes[k] for k in keys if k in self._outcomes}
        else:
            found = {key: Outcome(*row[:-2], bool(row[-2]), float(row[-1]))
                     for key, row in self._select("outcomes", OUTCOME_FIELDS, keys)}
        self.read += len(found)
        return found

    def put_outcomes(self, items: dict[Key, Outcome]) -> dict[Key, Outcome]:
        """Store a chunk's outcomes (one transaction; what is already there stays) and return what the store now
        holds for those keys: another writer's bits where it was first."""
        self.computed += len(items)
        if self._db is None:
            for key, outcome in items.items():
                self._outcomes.setdefault(key, outcome)
            return {k: self._outcomes[k] for k in items}
        rows = [(*key, *astuple(o)) for key, o in items.items()]
        marks = ", ".join("?" * (3 + len(OUTCOME_FIELDS)))
        self._write(f"INSERT OR IGNORE INTO outcomes VALUES ({marks})", rows)
        found = self.outcomes(items)
        self.read -= len(found)
        return found

    # ------------------------------------------------------------ features
    def features(self, kind: str, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
        """Stored feature vectors of `kind` by (sample id, plan)."""
        keys = list(dict.fromkeys(keys))
        if self._db is None:
            found = {k: self._features[(kind, *k)] for k in keys if (kind, *k) in self._features}
            for k in found:
                self._features.move_to_end((kind, *k))
            return found
        return {key[1:]: np.frombuffer(blob, dtype=np.float32)
                for key, (blob,) in self._select("features", ["value"], [(kind, *k) for k in keys])}

    def put_features(self, kind: str, items: dict[tuple[str, str], np.ndarray]) -> dict[tuple[str, str], np.ndarray]:
        items = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in items.items()}
        if self._db is None:
            for key, value in items.items():
                if (kind, *key) not in self._features:
                    self._features[(kind, *key)] = value
                    self._feature_bytes += value.nbytes
            found = {k: self._features[(kind, *k)] for k in items}
            while self._feature_bytes > MEMORY_FEATURES_MB * 2**20:
                self._feature_bytes -= self._features.popitem(last=False)[1].nbytes
            return found
        self._write("INSERT OR IGNORE INTO features VALUES (?, ?, ?, ?)",
                    [(kind, *k, v.tobytes()) for k, v in items.items()])
        return self.features(kind, items)

    # ------------------------------------------------------------ sqlite
    def _select(self, table: str, columns: Sequence[str], keys: Sequence[tuple]) -> list[tuple[tuple, tuple]]:
        if not keys:
            return []
        names = ("kind", "sample", "plan") if table == "features" else ("sample", "knobs", "plan")
        out = []
        for start in range(0, len(keys), 250):  # SQLite caps the number of bound parameters per statement
            batch = keys[start:start + 250]
            where = " OR ".join(f"({' AND '.join(f'{n} = ?' for n in names)})" for _ in batch)
            rows = self._db.execute(f"SELECT {', '.join(names)}, {', '.join(columns)} FROM {table} WHERE {where}",
                                    [v for k in batch for v in k]).fetchall()
            out += [(tuple(r[:3]), tuple(r[3:])) for r in rows]
        return out

    def _write(self, sql: str, rows: list[tuple]) -> None:
        with self._db:  # one transaction: all of the chunk or none of it
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(sql, rows)
