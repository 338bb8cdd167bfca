"""delivery: stateless workers that attempt delivery jobs, scaled out freely.

Consumes: DeliveryJob commands from the MAILBUS_JOBS work queue (shared consumer).
Reads: bodies from the `mailbus-bodies` Object Store.
Publishes: one DeliverySucceeded / DeliveryDeferred / DeliveryFailed per recipient,
and acks the job only after those are acknowledged.

Environment: MAILBUS_DELIVERY_ACK_WAIT (seconds, default 60) sets the shared
consumer's ack_wait; MAILBUS_FAULT=delivery.exit_before_ack is a test-only
fault point (see services.delivery.adapters.worker).
"""
