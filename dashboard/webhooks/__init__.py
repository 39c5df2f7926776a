"""Webhooks: tell people what changed, from the storage host, exactly once per job.

Admins register webhooks (page ``/admin/webhooks``, API ``/api/webhooks``, ``python -m dashboard
webhook add URL``). Each gets Slack/Mattermost-compatible text (``format: slack``) or a generic
JSON document (``format: json``), signed with HMAC-SHA256 under its own secret.

How nothing is lost and nothing is sent twice:

1. **Noticed in the same transaction.** The ingester writes what changed (a test that started
   failing on a minion, one that passes again) into ``outbox_events`` inside the transaction that
   stores the results; a stored job manifest adds an ``outbox_jobs`` row the same way
   (:mod:`dashboard.webhooks.outbox`). A crash after the commit cannot lose them; a rolled-back
   batch leaves none.
2. **Composed once per job.** The composer (:func:`dashboard.webhooks.outbox.compose_due`, one write
   transaction) waits until every minion the job's manifest targeted returned, or the wait
   expired, then turns the job's events into ONE message per webhook (a ``deliveries`` row holding
   the exact signed body) and marks the events composed, in the same transaction. Results without
   a manifest are grouped in a short window.
3. **Sent at least once, identified always.** The sender (:mod:`dashboard.webhooks.sender`, an
   asyncio task of the app like the ingester) leases due deliveries, POSTs them, and records the
   outcome; failures retry with exponential backoff. A crash mid-send leaves the lease to expire
   and the same body (same ``X-Distmon-Delivery`` id) goes again: receivers dedupe on that id.

Webhooks are admin-only: a webhook URL makes the storage host send HTTP requests wherever an
admin points it (the internal network included), which is why no other role can create one.
"""

from __future__ import annotations

# Event names a webhook subscribes to (all by default).
EVENTS = ("new_failure", "fixed", "minion_late", "job_incomplete", "quarantined")
FORMATS = ("json", "slack")
