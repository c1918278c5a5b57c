"""Credentials: generated on install and kept on upgrade, or the user's own Secrets; they reach
NATS, Valkey and the app only through Secrets, never through a ConfigMap or a pod spec."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chartlib import (
    CHART_DIR,
    LOOKUP_HELPER,
    Rendered,
    container,
    env_map,
    render,
    render_upgrade,
)
from tests.chart.scenarios import SCENARIOS

pytestmark = pytest.mark.chart

ALNUM32 = re.compile(r"^[A-Za-z0-9]{32}$")
# nats-server reads its password through a config variable: one that parses as a number (8e21...)
# stops it, so the generated one starts with letters.
NATS_PASSWORD = re.compile(r"^kiq[A-Za-z0-9]{29}$")


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


def secret_strings(r: Rendered, values: dict[str, Any]) -> set[str]:
    """Every secret value of a render: the data of its Secrets and the secrets of its values."""
    found = set()
    for secret in r.find("Secret"):
        for key, value in decoded(secret).items():
            if key != "user":  # a login name is no secret (and "kiqstack" is in every label)
                found |= {value, secret["data"][key]}
    found.add(values.get("apiToken", ""))
    for block in ("externalNats", "externalRedis"):
        url = values.get(block, {}).get("url", "")
        found |= {url, *re.findall(r"//[^@/]*:([^@/]+)@", url)}
    return {s for s in found if len(s) >= 2}


def pod_specs(r: Rendered) -> list[dict[str, Any]]:
    specs = [o["spec"] for o in r.objects if o["kind"] == "Pod"]
    specs += [
        o["spec"]["template"]["spec"]
        for o in r.objects
        if o["kind"] in ("Deployment", "StatefulSet")
    ]
    return specs


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_secret_in_configmaps_or_pod_specs(rendered: dict[str, Rendered], scenario: str) -> None:
    r, values = rendered[scenario], SCENARIOS[scenario][0]
    secrets = secret_strings(r, values)
    configmaps = [json.dumps(o.get("data", {})) for o in r.find("ConfigMap")]
    specs = [json.dumps(s) for s in pod_specs(r)]
    assert configmaps
    assert specs
    for value in secrets:
        for text in configmaps:
            assert value not in text, f"a secret value is in a ConfigMap ({scenario})"
        for text in specs:
            assert value not in text, f"a secret value is in a pod spec ({scenario})"


@pytest.mark.parametrize("scenario", ["defaults", "everything", "external-urls", "valkey-auth"])
def test_scenarios_have_secrets_to_hide(rendered: dict[str, Rendered], scenario: str) -> None:
    """The test above cannot pass for want of secrets."""
    assert len(secret_strings(rendered[scenario], SCENARIOS[scenario][0])) >= 2


def _ref(env: dict[str, dict[str, Any]], name: str) -> dict[str, str]:
    ref: dict[str, str] = env[name]["valueFrom"]["secretKeyRef"]
    return ref


@pytest.mark.parametrize(
    ("scenario", "secret", "generated"),
    [
        ("defaults", "demo-nats-auth", True),
        ("release-contains-nats", "my-nats-nats-auth", True),
        ("overrides", "demo-nats-auth", True),
        ("own-credentials", "my-nats-login", False),
    ],
)
def test_nats_server_and_app_read_one_login(
    rendered: dict[str, Rendered], scenario: str, secret: str, generated: bool
) -> None:
    r = rendered[scenario]
    # the NATS server: env of the (stand-in) StatefulSet, from nats.container.env ($tplYaml)
    [nats] = r.find("StatefulSet")
    server_env = {e["name"]: e for e in nats["spec"]["template"]["spec"]["containers"][0]["env"]}
    apps = [o for o in r.own() if o["kind"] == "Deployment"]
    assert len(apps) == 3  # server, worker, scheduler
    for dep in apps:
        env = env_map(dep)
        for var, key in (("KIQSTACK_NATS_USER", "user"), ("KIQSTACK_NATS_PASSWORD", "password")):
            assert _ref(env, var) == _ref(server_env, var) == {"name": secret, "key": key}
        assert env["NATS_URL"]["value"].startswith(
            "nats://$(KIQSTACK_NATS_USER):$(KIQSTACK_NATS_PASSWORD)@"
        )
    # the server's config asks for exactly that login, by variable (no value in the ConfigMap)
    [config] = [o for o in r.find("ConfigMap") if "nats.conf" in o["data"]]
    users = '"users":[{"password":$KIQSTACK_NATS_PASSWORD,"user":$KIQSTACK_NATS_USER}]'
    assert users in config["data"]["nats.conf"]
    assert bool(r.find("Secret", secret)) is generated
    if generated:
        login = decoded(r.get("Secret", secret))
        assert login["user"] == "kiqstack"
        assert NATS_PASSWORD.match(login["password"])


@pytest.mark.parametrize(
    ("scenario", "secret", "key", "generated"),
    [
        ("defaults", "demo-valkey-users", "default", True),
        ("release-contains-valkey", "valkey-prod-valkey-users", "default", True),
        ("valkey-auth", "demo-users", "pw", False),
        ("own-credentials", "my-valkey-users", "default", False),
    ],
)
def test_valkey_and_app_read_one_password(
    rendered: dict[str, Rendered], scenario: str, secret: str, key: str, generated: bool
) -> None:
    r = rendered[scenario]
    [valkey] = [o for o in r.find("Deployment") if "/charts/" in o["_source"]]
    # what the (stand-in) valkey chart reads: REDIS_PASSWORD and the users Secret volume
    valkey_env = env_map(valkey)
    assert _ref(valkey_env, "REDIS_PASSWORD") == {"name": secret, "key": key}
    [volume] = valkey["spec"]["template"]["spec"]["volumes"]
    assert volume["secret"]["secretName"] == secret
    for component in ("server", "worker"):
        dep = next(o for o in r.own() if o["metadata"]["name"].endswith(f"kiqstack-{component}"))
        env = env_map(dep)
        assert _ref(env, "KIQSTACK_REDIS_PASSWORD") == {"name": secret, "key": key}
        assert env["REDIS_URL"]["value"].startswith("redis://default:$(KIQSTACK_REDIS_PASSWORD)@")
    assert bool(r.find("Secret", secret)) is generated
    if generated:
        assert list(decoded(r.get("Secret", secret))) == [key]
        assert ALNUM32.match(decoded(r.get("Secret", secret))[key])


def test_valkey_without_auth_needs_no_secret(rendered: dict[str, Rendered]) -> None:
    r = rendered["valkey-auth-off"]
    assert r.get("ConfigMap", "demo-kiqstack")["data"]["REDIS_URL"] == "redis://demo-valkey:6379/0"
    assert not r.find("Secret", "demo-valkey-users")
    assert "KIQSTACK_REDIS_PASSWORD" not in env_map(r.get("Deployment", "demo-kiqstack-worker"))
    assert "NO PASSWORD" in r.notes
    r.get("Secret", "demo-nats-auth")  # NATS keeps its login


def test_generated_passwords_differ_per_install(chart: Path) -> None:
    first, second = render(chart), render(chart)
    for name in ("demo-nats-auth", "demo-valkey-users"):
        assert first.get("Secret", name)["data"] != second.get("Secret", name)["data"]


def test_every_lookup_goes_through_one_helper() -> None:
    """render_upgrade answers the lookups by redefining this one helper: it must see them all."""
    calls = []
    for path in (CHART_DIR / "templates").rglob("*"):
        if path.is_file():
            calls += [(path.name, m) for m in re.findall(r"\blookup\s+\"", path.read_text())]
    assert [name for name, _ in calls] == ["_secrets.tpl"]
    text = (CHART_DIR / "templates" / "_secrets.tpl").read_text()
    helper = text.split(f'{{{{- define "{LOOKUP_HELPER}" -}}}}')[1].split("{{- end }}")[0]
    assert 'lookup "v1" "Secret"' in helper


def _salt(r: Rendered) -> str:
    return str(r.get("Secret", "demo-kiqstack")["data"]["checksum-salt"])


def _checksum(r: Rendered, component: str = "server") -> str:
    dep = r.get("Deployment", f"demo-kiqstack-{component}")
    return str(dep["spec"]["template"]["metadata"]["annotations"]["checksum/secret"])


def test_credentials_persist_across_upgrade(chart: Path) -> None:
    values = {"apiToken": "s3cret"}
    install = render(chart, values)
    upgrade = render_upgrade(chart, values, install)
    for name in ("demo-nats-auth", "demo-valkey-users", "demo-kiqstack"):
        assert upgrade.get("Secret", name)["data"] == install.get("Secret", name)["data"], name
    # so the pods do not roll for nothing
    assert _checksum(upgrade) == _checksum(install) == _checksum(install, "worker")
    # a new token rolls them, and only the token changes
    rotated = render_upgrade(chart, {"apiToken": "n3w-t0ken"}, install)
    assert _salt(rotated) == _salt(install)
    assert _checksum(rotated) != _checksum(install)
    assert _checksum(rotated) == _checksum(rotated, "worker")
    assert decoded(rotated.get("Secret", "demo-kiqstack"))["API_TOKEN"] == "n3w-t0ken"  # noqa: S105
    for name in ("demo-nats-auth", "demo-valkey-users"):
        assert rotated.get("Secret", name)["data"] == install.get("Secret", name)["data"]
    # without the install's Secrets (a fresh release) everything is new
    fresh = render(chart, values)
    assert (
        fresh.get("Secret", "demo-nats-auth")["data"]
        != install.get("Secret", "demo-nats-auth")["data"]
    )
    assert _salt(fresh) != _salt(install)


def test_upgrade_fills_in_a_missing_key(chart: Path) -> None:
    broken = render(chart)
    nats = broken.get("Secret", "demo-nats-auth")
    nats["data"] = {"user": nats["data"]["user"]}  # someone deleted the password key
    upgrade = render_upgrade(chart, None, broken)
    data = decoded(upgrade.get("Secret", "demo-nats-auth"))
    assert data["user"] == "kiqstack"
    assert ALNUM32.match(data["password"])
    assert (
        upgrade.get("Secret", "demo-valkey-users")["data"]
        == broken.get("Secret", "demo-valkey-users")["data"]
    )


def test_checksum_secret_reveals_nothing_about_the_token(chart: Path) -> None:
    r = render(chart, {"apiToken": "s3cret"})
    annotation = _checksum(r)
    assert _checksum(r, "worker") == annotation
    # neither the old hash of the Secret nor a hash of the token itself
    assert annotation != hashlib.sha256(b"s3cret").hexdigest()
    old = r.manifests[next(k for k in r.manifests if k.endswith("templates/secret.yaml"))]
    assert annotation != hashlib.sha256(old.encode()).hexdigest()
    # it is keyed by a 64-character random salt that only the Secret holds
    salt = _salt(r)
    assert re.fullmatch(r"[A-Za-z0-9]{64}", base64.b64decode(salt).decode())
    expected = hashlib.sha256(f'{salt}\n{{"API_TOKEN":"s3cret"}}'.encode()).hexdigest()
    assert annotation == expected
    # the same token under another salt gives an unrelated hash: a guess cannot be checked
    assert _checksum(render(chart, {"apiToken": "s3cret"})) != annotation
    # the salt stays out of the environment (the Secret is read key by key)
    for component in ("server", "worker"):
        c = container(r.get("Deployment", f"demo-kiqstack-{component}"))
        assert c["envFrom"] == [{"configMapRef": {"name": "demo-kiqstack"}}]
        keys = [e["valueFrom"]["secretKeyRef"]["key"] for e in c["env"] if "valueFrom" in e]
        assert "checksum-salt" not in keys


def test_example_tasks_are_opt_in(defaults: Rendered, chart: Path) -> None:
    assert defaults.get("ConfigMap", "demo-kiqstack")["data"]["TASK_MODULES"] == ""
    r = render(chart, {"config": {"taskModules": "app.tasks.example, mypkg.tasks"}})
    assert r.get("ConfigMap", "demo-kiqstack")["data"]["TASK_MODULES"] == (
        "app.tasks.example, mypkg.tasks"
    )
    assert "modules app.tasks.example, mypkg.tasks" in r.notes
    # the helm test dispatches the built-in task either way
    script = r.get("Pod", "demo-kiqstack-test-task-roundtrip")["spec"]["containers"][0]["args"][0]
    assert "/tasks/kiqstack.ping?" in script


def test_valkey_inline_password_is_read_from_the_subchart_secret(chart: Path) -> None:
    """Without usersExistingSecret the valkey chart keeps inline passwords in <valkey>-auth."""
    auth = {
        "usersExistingSecret": "",
        "aclUsers": {"default": {"permissions": "~* &* +@all", "password": "inline-pw"}},
    }
    r = render(chart, {"valkey": {"auth": auth}})
    ref = {"name": "demo-valkey-auth", "key": "default-password"}
    valkey = next(o for o in r.find("Deployment") if "/charts/" in o["_source"])
    assert _ref(env_map(valkey), "REDIS_PASSWORD") == ref
    assert (
        _ref(env_map(r.get("Deployment", "demo-kiqstack-server")), "KIQSTACK_REDIS_PASSWORD") == ref
    )
    assert not r.find("Secret", "demo-valkey-users")
