"""compose.yaml must start every part the code expects, with the variables the code reads.

No Docker daemon on the test machines: the file is parsed and checked against the code itself
(service.settings for the variables, the typer app for the commands, pyproject for the packages).
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SECRET_WORDS = ("PASSWORD", "TOKEN", "KEYS", "SECRET", "SIGNING")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def workers(services) -> dict:
    return {n: s for n, s in services.items() if s.get("command", [])[:2] == ["camloop", "worker"]}


def env_names_read_by_settings() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is not None:
            names.update(str(a) for a in alias.choices)
        else:
            names.add(f"CAMLOOP_{name.upper()}")
    return names


def variable(value: str) -> str | None:
    """The environment variable a compose value comes from: "${X:?…}" → "X"."""
    m = re.fullmatch(r"\$\{(\w+)(?::?[-?][^}]*)?\}", str(value))
    return m.group(1) if m else None


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target → (source, read_only) of a service's short-syntax volumes."""
    out = {}
    for v in service.get("volumes", []):
        parts = v.split(":")
        ro = parts[-1] == "ro"
        if ro:
            parts = parts[:-1]
        target = parts[-1]
        source = ":".join(parts[:-1])
        out[target] = (source, ro)
    return out


def test_every_url_the_code_is_given_names_a_service_on_its_port(services):
    api = services["api"]["environment"]
    expected = {"REDIS_URL": ("redis", 6379), "DATABASE_URL": ("postgres", 5432),
                "CAMLOOP_LABEL_STUDIO_URL": ("label-studio", 8080),
                "CAMLOOP_LABEL_STUDIO_WEBHOOK_URL": ("api", 8000)}
    for var, (host, port) in expected.items():
        value = api[var]
        # DATABASE_URL carries "${POSTGRES_PASSWORD:?…}": take what follows the "@".
        netloc = value.split("@", 1)[1].split("/")[0] if var == "DATABASE_URL" else urlsplit(value).netloc
        assert netloc == f"{host}:{port}", var
        assert host in services, f"{var} points at {host}, which compose does not start"
    assert api["DATABASE_URL"].startswith("postgresql+psycopg://")  # the driver pyproject installs
    assert urlsplit(api["CAMLOOP_LABEL_STUDIO_WEBHOOK_URL"]).path == "/api/v1/webhooks/label-studio"
    serve = services["api"]["command"]
    assert serve[:2] == ["camloop", "serve"] and serve[serve.index("--port") + 1] == "8000"
    assert "8000:8000" in services["api"]["ports"] and "8080:8080" in services["label-studio"]["ports"]


def test_api_and_workers_read_only_variables_that_settings_knows(services):
    known = env_names_read_by_settings()
    for name, svc in {"api": services["api"], **workers(services)}.items():
        env = svc["environment"]
        ours = {k for k in env if k.startswith("CAMLOOP_") or k in ("REDIS_URL", "DATABASE_URL")}
        assert not ours - known, f"{name} sets variables camloop never reads: {ours - known}"
    api = services["api"]["environment"]
    for required in ("REDIS_URL", "DATABASE_URL", "CAMLOOP_DATA_DIR", "CAMLOOP_ARTIFACTS_DIR", "CAMLOOP_API_KEYS",
                     "CAMLOOP_URL_SIGNING_KEY", "CAMLOOP_PUBLIC_BASE_URL", "CAMLOOP_LABEL_STUDIO_URL",
                     "CAMLOOP_LABEL_STUDIO_TOKEN", "CAMLOOP_LABEL_STUDIO_WEBHOOK_SECRET"):
        assert required in api, required


def test_the_experts_browsers_may_read_images_from_label_studios_published_origin(services):
    """Label Studio's editor (its page on the published port) fetches the signed images from the
    API: CORS must name the origin browsers use, not the service name camloop uses inside."""
    from service.settings import parse_origins

    api = services["api"]["environment"]
    value = api["CAMLOOP_CORS_ORIGINS"]
    default = re.fullmatch(r"\$\{CAMLOOP_CORS_ORIGINS:-([^}]*)\}", value).group(1)
    published = {p.split(":")[0] for p in services["label-studio"]["ports"]}
    origins = parse_origins(default)
    assert origins and all(urlsplit(o).port and str(urlsplit(o).port) in published for o in origins), origins
    assert not any("label-studio" in o for o in origins)
    example = dict(ln.split("=", 1) for ln in (ROOT / "deploy" / "env.example").read_text().splitlines()
                   if ln and not ln.startswith("#"))
    assert parse_origins(example["CAMLOOP_CORS_ORIGINS"]) == origins


def test_workers_share_the_queue_and_the_paths_of_the_api_and_get_no_secrets(services):
    api = services["api"]
    ws = workers(services)
    assert "worker" in ws
    for name, w in ws.items():
        env = w["environment"]
        for shared in ("REDIS_URL", "CAMLOOP_DATA_DIR", "CAMLOOP_ARTIFACTS_DIR", "CAMLOOP_QUEUE_PREFIX"):
            assert env[shared] == api["environment"][shared], (name, shared)
        assert not [k for k in env if any(s in k for s in SECRET_WORDS)], f"{name} gets secrets it never uses"
        # Job manifests carry absolute paths: images and artifacts at the same places as the API's.
        am, wm = mounts(api), mounts(w)
        for var in ("CAMLOOP_DATA_DIR", "CAMLOOP_ARTIFACTS_DIR"):
            target = env[var]
            assert target in am and target in wm, (name, var)
            assert wm[target][0] == am[target][0], (name, var)
        assert wm[env["CAMLOOP_DATA_DIR"]][1], "workers only read the images"
        assert not wm[env["CAMLOOP_ARTIFACTS_DIR"]][1], "workers write the artifacts"


def test_each_worker_reserves_its_own_gpu_and_sees_it_as_cuda0(services):
    seen = []
    for name, w in workers(services).items():
        devices = w["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and "gpu" in devices[0]["capabilities"], name
        assert len(devices[0]["device_ids"]) == 1, name
        seen.append(devices[0]["device_ids"][0])
        assert w["environment"]["CUDA_VISIBLE_DEVICES"] == "0" and w["environment"]["CAMLOOP_DEVICE"] == "cuda"
    assert len(seen) == len(set(seen)) >= 2, f"workers share a GPU: {seen}"
    assert variable(services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0])


def test_label_studio_uses_postgres_and_the_legacy_token_camloop_sends(services):
    ls = services["label-studio"]["environment"]
    api = services["api"]["environment"]
    assert ls["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert variable(ls["LABEL_STUDIO_USER_TOKEN"]) == variable(api["CAMLOOP_LABEL_STUDIO_TOKEN"])
    assert ls["DJANGO_DB"] == "default" and ls["POSTGRE_HOST"] == "postgres" and ls["POSTGRE_PORT"] == "5432"
    assert variable(ls["POSTGRE_PASSWORD"]) == variable(services["postgres"]["environment"]["POSTGRES_PASSWORD"])
    init = "".join(p.read_text() for p in (ROOT / "deploy" / "postgres-init").glob("*.sql"))
    assert re.search(rf"CREATE DATABASE {ls['POSTGRE_NAME']}\b", init), "Label Studio's database is never created"
    assert "./deploy/postgres-init:/docker-entrypoint-initdb.d:ro" in services["postgres"]["volumes"]
    # Its webhooks go to the api service: a private address its SSRF guard refuses unless told.
    assert ls["SSRF_PROTECTION_ENABLED"] == "false"


def test_healthchecks_and_dependencies(compose, services):
    for name, svc in services.items():
        assert "healthcheck" in svc and svc["healthcheck"]["test"], name
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services and cond["condition"] == "service_healthy", (name, dep)
    assert set(services["api"]["depends_on"]) == {"redis", "postgres", "label-studio"}
    declared = set(compose["volumes"])
    for svc in services.values():
        for source, _ in mounts(svc).values():
            if not source.startswith((".", "/", "$")):
                assert source in declared, source


def test_secrets_come_from_the_environment_not_the_file(services):
    for svc in services.values():
        for key, value in (svc.get("environment") or {}).items():
            if "_ENABLE_" in key or key == "SSRF_PROTECTION_ENABLED":
                continue  # boolean switches, not secrets
            if any(s in key for s in SECRET_WORDS):
                assert variable(value), f"{key} is hard-coded"
    db = services["api"]["environment"]["DATABASE_URL"]
    assert re.search(r"://camloop:\$\{POSTGRES_PASSWORD:\?[^}]*\}@", db), "the database password is hard-coded"


def test_every_variable_compose_reads_is_in_the_env_example():
    text = (ROOT / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    example = {ln.split("=", 1)[0] for ln in (ROOT / "deploy" / "env.example").read_text().splitlines()
               if ln and not ln.startswith("#")}
    assert used == example, f"missing from env.example: {used - example}; not used: {example - used}"


def test_commands_parse_with_the_cli_and_the_image_installs_every_package(services):
    import typer.main

    from service.cli import app

    cli = typer.main.get_command(app)
    for name, svc in services.items():
        cmd = svc.get("command") or []
        if cmd[:1] == ["camloop"]:
            sub = cli.commands[cmd[1]]
            sub.make_context(cmd[1], list(cmd[2:]))  # raises on an unknown option or a bad value
    docker = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include = \[([^\]]*)\]", pyproject).group(1)
    for pkg in re.findall(r'"(\w+)\*"', include):
        assert re.search(rf"^COPY {pkg} \./{pkg}$", docker, re.M), f"the image lacks the {pkg} package"
    assert re.search(r'^CMD \["camloop", "serve"', docker, re.M)
    # The image installs the versions the development set-up installs, from the same file.
    copied = re.search(r"^COPY (scripts/constraints/camloop\.txt) \./(\S+)$", docker, re.M)
    assert copied and (ROOT / copied.group(1)).is_file(), "the image does not copy the constraints file"
    assert re.search(rf"^RUN pip install -c {re.escape(copied.group(2))} \. ", docker, re.M), docker
