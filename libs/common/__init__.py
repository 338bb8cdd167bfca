"""Code shared by every mailbus service, cut by kind (services never import each other):

- `contract/`: what services agree on over the bus: subjects, event and policy
  models, ids, bus permissions. Pure: imports nothing of the runtime.
- `runtime/`: what every service runs on: the service start, NATS connection and
  publishing, consumers, KV, leases, health, metrics, telemetry, the policy client.
- `mail/`: mail code more than one service needs: mailbox store, body submission,
  a message's history, xtext, DNS look-ups, TLS, password hashes, languages.
- `config/`: the configuration model, loader and reference.
"""
