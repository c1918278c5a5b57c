"""Cluster DNS feed of e2e/cluster/cluster.sh (CI-only): Services, EndpointSlices -> dnsmasq.

Every 2 s: A records of ClusterIP Services, of headless Services' ready endpoints and of StatefulSet
pod host names, under cluster.local; dnsmasq re-reads the file on SIGHUP.
Usage: python3 dnsfeed.py HOSTS_FILE DNSMASQ_PID_FILE (kubectl on PATH, KUBECONFIG set).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any


def records(items: list[dict[str, Any]]) -> str:
    lines, headless = set(), set()
    for obj in items:
        meta = obj["metadata"]
        if obj["kind"] == "Service":
            ip = obj["spec"].get("clusterIP")
            fqdn = f"{meta['name']}.{meta['namespace']}.svc.cluster.local"
            if ip and ip != "None":
                lines.add(f"{ip} {fqdn}")
            elif ip == "None":
                headless.add(fqdn)
    for obj in items:
        if obj["kind"] != "EndpointSlice":
            continue
        service = (obj["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
        if not service:
            continue
        fqdn = f"{service}.{obj['metadata']['namespace']}.svc.cluster.local"
        for endpoint in obj.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses", [])[:1]:
                if fqdn in headless:
                    lines.add(f"{address} {fqdn}")
                if endpoint.get("hostname"):
                    lines.add(f"{address} {endpoint['hostname']}.{fqdn}")
    return "".join(sorted(line + "\n" for line in lines))


def main() -> None:
    hosts, pidfile = sys.argv[1:3]
    while True:
        try:
            out = subprocess.run(
                ["kubectl", "get", "services,endpointslices", "-A", "-o", "json"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
            items = json.loads(out.stdout)["items"] if out.returncode == 0 else None
        except (OSError, ValueError, subprocess.TimeoutExpired):
            items = None
        if items is not None:
            text = records(items)
            with open(hosts) as current:
                changed = text != current.read()
            if changed:
                with open(hosts + ".new", "w") as new:
                    new.write(text)
                os.replace(hosts + ".new", hosts)
                try:
                    with open(pidfile) as pid:
                        os.kill(int(pid.read()), signal.SIGHUP)
                except (OSError, ValueError):
                    pass
        time.sleep(2)


if __name__ == "__main__":
    main()
