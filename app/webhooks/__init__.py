"""Webhooks: a project's endpoints, and the signed deliveries of its job events.

A status change (``app.services.job_state``) writes one outbox row per subscribed endpoint in its own
transaction (``outbox``); once committed, a ``finetune.deliver_webhook`` task on the light (cpu) queue sends
it (``delivery``), signed per the Standard Webhooks specification (``signing``), to an address checked after
DNS resolution (``guard``). Failures are retried on the ``FT_WEBHOOK_RETRY_SCHEDULE`` by the API's sweep,
with the same ``webhook-id`` every time.
"""
