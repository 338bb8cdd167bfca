"""Write the generated bus permissions where compose and Kubernetes read them.

    .venv/bin/python deploy/nats/sync_permissions.py

Writes `deploy/nats/permissions.conf` (included by nats-server.conf) and the
`permissions.conf` key of the nats-config ConfigMap in deploy/k8s/nats.yaml,
both exactly `python -m libs.common.contract.permissions`. Run it after changing
libs/common/contract/permissions.py or subjects.py; tests/integration/
test_deploy_manifests.py fails until both copies match the module again.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PERMISSIONS_CONF = ROOT / "deploy" / "nats" / "permissions.conf"
NATS_YAML = ROOT / "deploy" / "k8s" / "nats.yaml"
# The block scalar of the ConfigMap key, up to the next key at the same indent.
KEY_BLOCK = re.compile(r"(?m)^(  permissions\.conf: \|\n)((?:    .*\n|\n)*)")


def configmap_with(yaml_text: str, conf: str) -> str:
    match = KEY_BLOCK.search(yaml_text)
    if match is None:
        raise SystemExit(f"no `permissions.conf: |` key in {NATS_YAML}")
    body = "".join(f"    {line}\n" if line else "\n" for line in conf.splitlines())
    # Blank lines that separated the block from what follows stay where they were.
    trailing = match.group(2)[len(match.group(2).rstrip("\n")) :]
    return yaml_text[: match.start(2)] + body + trailing[1:] + yaml_text[match.end(2) :]


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from libs.common.contract.permissions import deploy_file

    conf = deploy_file()
    PERMISSIONS_CONF.write_text(conf)
    NATS_YAML.write_text(configmap_with(NATS_YAML.read_text(), conf))
    print(f"wrote {PERMISSIONS_CONF.relative_to(ROOT)} and {NATS_YAML.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
