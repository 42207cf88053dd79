"""Bounded staleness by segment tickets.

Every segment takes a ticket when its first decision is requested. The ticket names the global
batch, i.e. the trainer version ``u`` that will train it: batches fill in ticket order and close
once they reserve ``batch_samples`` samples. A rollout worker at version ``v`` serves a request
only if its ticket's ``u <= v + eta`` (otherwise it holds it: throttling), and the trainer trains
batch ``u`` at version ``u``. So every decision, whatever its position in the segment, has
staleness ``u - v <= eta``; ``eta = 0`` is exactly on-policy (the sync schedule).

No deadlock: a ticket never waits for a ticket, only for weights. Batch ``u`` is closed by tickets
that need at most version ``u - eta <= u``, which the trainer has already published.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ticket:
    ticket_id: int
    target_version: int
    """The trainer version that trains this segment (its global batch)."""
    samples: int
    """Samples reserved (n envs x T decisions)."""
    closes_batch: bool
    """This ticket filled its batch; ``batch_tickets`` then says how many tickets the batch has."""
    batch_tickets: int


class StalenessGate:
    def __init__(self, batch_samples: int, start_version: int = 0) -> None:
        if batch_samples < 1:
            raise ValueError("batch_samples must be >= 1")
        self.batch_samples = batch_samples
        self.fill_version = start_version
        self.fill_samples = 0
        self.fill_tickets = 0
        self.next_id = 0

    def acquire(self, samples: int) -> Ticket:
        self.fill_samples += samples
        self.fill_tickets += 1
        closes = self.fill_samples >= self.batch_samples
        t = Ticket(self.next_id, self.fill_version, samples, closes, self.fill_tickets if closes else 0)
        self.next_id += 1
        if closes:
            self.fill_version += 1
            self.fill_samples = 0
            self.fill_tickets = 0
        return t


def admissible(target_version: int, version: int, max_staleness: int) -> bool:
    """May a worker at ``version`` act for a segment that trains at ``target_version``?"""
    return target_version <= version + max_staleness
