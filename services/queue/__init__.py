"""queue: each message's delivery state as an event-sourced aggregate.

Consumes: MessageReceived and delivery results from MAILBUS_EVENTS.
Publishes: DeliveryScheduled and MessageCompleted events, and DeliveryJob commands
to MAILBUS_JOBS; deletes a body once its message is complete.
State is a fold over the message's events and can be rebuilt from the stream.
"""
