"""delivery: stateless workers that attempt delivery jobs, scaled out freely.

Consumes: DeliveryJob commands from the MAILBUS_JOBS work queue (shared consumer).
Reads: bodies from the `mailbus-bodies` Object Store.
Publishes: one DeliverySucceeded / DeliveryDeferred / DeliveryFailed per recipient,
and acks the job only after those are acknowledged.
"""
