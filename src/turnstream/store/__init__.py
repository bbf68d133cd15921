"""The store: the only part that speaks SQL.

The event-sourced application on PostgreSQL (eventsourcing), its recorder with the COPY
group-commit path and the turn index, the group writer, admission and rate limits in
SQL, and the gateway that runs store calls off the event loop.
"""
