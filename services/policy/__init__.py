"""policy: every accept/refuse decision, as a nats.micro service in a queue group.

Answers: `mailbus.policy.v1.<stage>` requests from ingress with a PolicyDecision that
names the rule that decided. The decision logic is the pure `core`; the adapter only
translates NATS messages. Any number of replicas may run.
"""
