"""Sets of values the chart is rendered with (fixture ``rendered`` in conftest.py): every one is
validated for Kubernetes 1.33 and 1.36 (test_chart_matrix); other tests look inside them."""

from __future__ import annotations

from typing import Any

from tests.chart.chartlib import ALL_APIS, KEDA_API

EXTERNAL_URLS = {
    "nats": {"enabled": False},
    "valkey": {"enabled": False},
    "externalNats": {"url": "nats://user:pw@nats.messaging:4222"},
    "externalRedis": {"url": "rediss://:pw@redis.cache:6380/1"},
}
EXTERNAL_SECRETS = {
    "nats": {"enabled": False},
    "valkey": {"enabled": False},
    "externalNats": {"existingSecret": "nats-conn", "monitoringEndpoint": "nats.messaging:8222"},
    "externalRedis": {"existingSecret": "redis-conn", "existingSecretKey": "url"},
    "existingSecret": "api-token",
    "worker": {"autoscaling": {"mode": "keda"}},
}
EVERYTHING = {
    "server": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "tls": [{"secretName": "tls", "hosts": ["kiqstack.local"]}],
        }
    },
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
    },
    "metrics": {
        "scrapeAnnotations": True,
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    },
    "apiToken": "s3cret",
}

# Three worker pools, one per autoscaling mode (test_chart_pools looks inside).
POOLS = {
    "worker": {"resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}},
    "workers": {
        "default": {"autoscaling": {"minReplicas": 2}},
        "cpu": {
            "queues": ["cpu", "video"],
            "concurrency": 2,
            "processes": 4,
            "fetchBatch": 1,
            "shutdownTimeout": 600,
            "resources": {"requests": {"cpu": "2"}},
            "nodeSelector": {"pool": "cpu"},
            "tolerations": [{"key": "dedicated", "value": "cpu", "effect": "NoSchedule"}],
            "autoscaling": {
                "mode": "keda",
                "minReplicas": 0,
                "maxReplicas": 6,
                "targetCPUUtilizationPercentage": None,
                "keda": {"lagThreshold": 4, "activationLagThreshold": 1},
            },
        },
        "reports": {
            "replicas": 3,
            "autoscaling": {"mode": "none"},
            "priorityClassName": "batch",
            "podLabels": {"team": "finance"},
            "topologySpreadConstraints": [],
        },
    },
}

SCENARIOS: dict[str, tuple[dict[str, Any], str, list[str] | None]] = {
    # name: (values, release name, api versions)
    "defaults": ({}, "demo", None),
    "hpa-memory": (
        {"worker": {"autoscaling": {"targetMemoryUtilizationPercentage": 80}}},
        "demo",
        None,
    ),
    "keda": ({"worker": {"autoscaling": {"mode": "keda", "minReplicas": 0}}}, "demo", [KEDA_API]),
    "keda-skip-check": (
        {"worker": {"autoscaling": {"mode": "keda"}}, "skipApiChecks": True},
        "demo",
        None,
    ),
    "none": ({"worker": {"autoscaling": {"mode": "none"}, "replicas": 3}}, "demo", None),
    "external-urls": (EXTERNAL_URLS, "demo", None),
    "external-secrets": (EXTERNAL_SECRETS, "demo", [KEDA_API]),
    "everything": (EVERYTHING, "demo", ALL_APIS),
    "release-contains-nats": ({}, "my-nats", None),
    "release-contains-kiqstack": ({}, "kiqstack", None),
    "release-contains-valkey": ({"networkPolicy": {"enabled": True}}, "valkey-prod", None),
    "overrides": (
        {"fullnameOverride": "tasks", "nats": {"fullnameOverride": "queue"}},
        "demo",
        None,
    ),
    "valkey-auth": (
        {
            "valkey": {
                "auth": {
                    "enabled": True,
                    "usersExistingSecret": "{{ .Release.Name }}-users",
                    "aclUsers": {"default": {"permissions": "~* &* +@all", "passwordKey": "pw"}},
                }
            }
        },
        "demo",
        None,
    ),
    "server-only": ({"worker": {"enabled": False}}, "demo", None),
    "worker-only": ({"server": {"enabled": False}}, "demo", None),
    "dev-overrides": (
        {"config": {"reload": True}, "securityContext": {"readOnlyRootFilesystem": False}},
        "demo",
        None,
    ),
    # security variations (test_chart_secrets, test_chart_networkpolicy look inside them)
    "policy-off": ({"networkPolicy": {"enabled": False}}, "demo", None),
    "external-fenced": (
        {
            **EXTERNAL_URLS,
            "networkPolicy": {
                "externalNats": {"podSelector": {"matchLabels": {"app": "ci-nats"}}},
                "externalRedis": {
                    "podSelector": {
                        "matchExpressions": [
                            {"key": "app", "operator": "In", "values": ["ci-redis"]}
                        ]
                    }
                },
            },
        },
        "demo",
        None,
    ),
    "own-credentials": (
        {
            "nats": {"auth": {"existingSecret": "my-nats-login"}},
            "valkey": {"auth": {"usersExistingSecret": "my-valkey-users"}},
        },
        "demo",
        None,
    ),
    "valkey-auth-off": ({"valkey": {"auth": {"enabled": False}}}, "demo", None),
    "keda-metrics-from": (
        {
            "worker": {"autoscaling": {"mode": "keda"}},
            "networkPolicy": {
                "apiFrom": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}],
                "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
            },
        },
        "demo",
        [KEDA_API],
    ),
    "pools": (POOLS, "demo", [KEDA_API]),
    "pools-everything": ({**EVERYTHING, **POOLS}, "demo", ALL_APIS),
    "pools-hpa-keda": (
        {"workers": {"cpu": {"autoscaling": {"mode": "keda", "minReplicas": 0}}}},
        "demo",
        [KEDA_API],
    ),
    "pools-old-style-keda": (
        {"worker": {"autoscaling": {"mode": "keda"}}, "workers": {"cpu": {}}},
        "demo",
        [KEDA_API],
    ),
    "scheduler-off": ({"scheduler": {"enabled": False}}, "demo", None),
    "scheduler-ha": ({"scheduler": {"replicas": 2}}, "demo", None),
    "ingress-open-allowed": (
        {"server": {"ingress": {"enabled": True, "allowUnauthenticated": True}}},
        "demo",
        None,
    ),
}
