"""notifier: RFC 3464 delivery reports (failure, delay, success) in the sender's language.

Not built yet (its issue comes after delivery): the process runs and answers health
requests so the topology and `mailbus up` are complete; it consumes nothing.
"""
