"""A support team's tools, as a plugin: look a ticket up, and close one (a side effect, which the
team's namespace has wait for an approval). The tickets are a few made-up ones kept here, so the
plugin runs offline:

    planvm exec PLAN.json --plugin examples/plugins/tickets.py

See the two-team planvm.toml in docs/service.md (Namespaces), where only the support namespace
has these tools.
"""

from __future__ import annotations

from typing import Any

from tools import tool

TICKETS = {
    "T-1001": {"customer": "Acme", "subject": "Run stuck in waiting", "status": "open"},
    "T-1002": {"customer": "Globex", "subject": "Export of a run fails", "status": "open"},
    "T-1003": {"customer": "Initech", "subject": "Worker lost its lease", "status": "closed"},
}


def _ticket(ticket_id: str) -> dict[str, Any]:
    key = ticket_id.strip().upper()
    if key not in TICKETS:
        raise ValueError(f"no ticket {ticket_id!r}; the tickets are {', '.join(TICKETS)}")
    return {"id": key, **TICKETS[key]}


@tool
def lookup_ticket(ticket_id: str) -> dict[str, Any]:
    """The ticket with this id: customer, subject and status.

    Args:
        ticket_id: The ticket's id, e.g. T-1001.
    """
    return _ticket(ticket_id)


@tool(side_effects=True)
def close_ticket(ticket_id: str, note: str) -> dict[str, Any]:
    """Close the ticket with a note to the customer; returns the ticket as closed.

    Args:
        ticket_id: The ticket's id, e.g. T-1001.
        note: What the customer is told.
    """
    return {**_ticket(ticket_id), "status": "closed", "note": note}
