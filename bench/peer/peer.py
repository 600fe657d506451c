"""Peer benchmark: the Python `eventsourcing` library on the same Postgres and workload.

Each operation loads an account aggregate (replaying its events) and appends one
event (a credit). `setup` creates the accounts; `run` drives N threads for a while
and prints one JSON line: {"ops", "errors", "conflicts", "seconds", "latencies_us"}.

Usage: peer.py setup DBNAME ACCOUNTS | peer.py run DBNAME THREADS WARMUP_S SECONDS
Connection: POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, POSTGRES_PASSWORD (env).
"""

import json
import os
import random
import sys
import threading
import time
import uuid
from decimal import Decimal

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

NAMESPACE = uuid.UUID("6f1c3a52-8f0e-4a7e-9d8e-0c2b5e1f7a10")


def account_id(n: int) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, str(n))


class Account(Aggregate):
    @staticmethod
    def create_id(number: int) -> uuid.UUID:
        return account_id(number)

    @event("Opened")
    def __init__(self, number: int, currency: str, balance: Decimal):
        self.number = number
        self.currency = currency
        self.balance = balance
        self.status = "CREATED"

    @event("Activated")
    def activate(self) -> None:
        self.status = "ACTIVE"

    def credit(self, amount: Decimal) -> None:
        if self.status != "ACTIVE":
            raise ValueError("account is not active")
        self._credited(amount=amount, balance=self.balance + amount)

    @event("Credited")
    def _credited(self, amount: Decimal, balance: Decimal) -> None:
        self.balance = balance


class Bank(Application):
    pass


def make_app(dbname: str, pool: int) -> Bank:
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": os.environ.get("POSTGRES_HOST", "127.0.0.1"),
        "POSTGRES_PORT": os.environ.get("POSTGRES_PORT", "5432"),
        "POSTGRES_USER": os.environ.get("POSTGRES_USER", "postgres"),
        "POSTGRES_PASSWORD": os.environ.get("POSTGRES_PASSWORD", ""),
        "POSTGRES_POOL_SIZE": str(pool),
        "POSTGRES_MAX_OVERFLOW": "0",
        "CREATE_TABLE": "true",
    }
    return Bank(env=env)


def setup(dbname: str, accounts: int) -> None:
    app = make_app(dbname, 1)
    batch = []
    for n in range(1, accounts + 1):
        account = Account(n, "MAD", Decimal("1000.00"))
        account.activate()
        batch.append(account)
        if len(batch) == 500:
            app.save(*batch)
            batch = []
    if batch:
        app.save(*batch)
    print(json.dumps({"accounts": accounts}))


def run(dbname: str, threads: int, warmup: float, seconds: float, accounts: int) -> None:
    app = make_app(dbname, threads)
    start = time.monotonic()
    measure_from = start + warmup
    deadline = measure_from + seconds
    lock = threading.Lock()
    totals = {"ops": 0, "errors": 0, "conflicts": 0}
    latencies: list[int] = []

    def worker() -> None:
        rng = random.Random()
        mine: list[int] = []
        ops = errors = conflicts = 0
        while True:
            began = time.monotonic()
            if began >= deadline:
                break
            ident = account_id(rng.randint(1, accounts))
            try:
                while True:
                    account = app.repository.get(ident)
                    account.credit(Decimal("1.00"))
                    try:
                        app.save(account)
                        break
                    except IntegrityError:
                        conflicts += 1 if began >= measure_from else 0
            except (AggregateNotFoundError, ValueError, OSError):
                errors += 1 if began >= measure_from else 0
                continue
            if began >= measure_from:
                ops += 1
                mine.append(int((time.monotonic() - began) * 1e6))
        with lock:
            totals["ops"] += ops
            totals["errors"] += errors
            totals["conflicts"] += conflicts
            latencies.extend(mine)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    app.close()
    print(json.dumps({**totals, "seconds": seconds, "latencies_us": latencies}))


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "setup":
        setup(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) >= 7 and sys.argv[1] == "run":
        run(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
