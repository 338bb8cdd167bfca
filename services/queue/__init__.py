"""queue: each message's delivery state as an event-sourced aggregate.

Consumes: from MAILBUS_EVENTS, MessageReceived, the delivery results, ReportSent
(the notifier's answers) and the operator's MessageHeld / MessageReleased /
MessageDeleted; from MAILBUS_TIMERS, its own fired timers (retry, warn, expire).
Publishes: DeliveryScheduled (retry rounds; MessageReceived records the first),
RecipientsFailed / RecipientsDelivered (per attempt round), MessageDelayed,
MessageExpired, and MessageCompleted only for a null sender's expiry (completion is
every recipient final, which the fold sees), DeliveryJob commands to MAILBUS_JOBS,
and one-shot JetStream message schedules; deletes a body once its message is done
and every report it triggered was answered.
Answers: `mailbus queue list|show|retry|hold|release|delete` (nats.micro,
`subjects.queue_api_subject(op)`), from an index rebuilt from the log at start.
State is a fold over the message's events and can be rebuilt from the stream; every
status it can take and every transition between them are in `core/transitions.py`.
"""
