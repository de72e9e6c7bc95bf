"""compose.yaml must start every part the code expects, with the variables the code reads."""
from pathlib import Path

import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _compose():
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _env_names_read_by_settings() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is not None:
            names.update(str(a) for a in alias.choices)
        else:
            names.add(f"CAMLOOP_{name.upper()}")
    return names


def test_every_service_is_there_with_a_healthcheck_or_dependency():
    services = _compose()["services"]
    assert {"redis", "postgres", "label-studio", "api", "worker"} <= set(services)
    for name in ("redis", "postgres", "label-studio", "api"):
        assert "healthcheck" in services[name], name


def test_api_and_worker_read_only_variables_that_settings_knows():
    services = _compose()["services"]
    known = _env_names_read_by_settings()
    for name in ("api", "worker"):
        env = services[name]["environment"]
        ours = {k for k in env if k.startswith("CAMLOOP_") or k in ("REDIS_URL", "DATABASE_URL")}
        unknown = ours - known
        assert not unknown, f"{name} sets variables camloop never reads: {unknown}"
        for required in ("REDIS_URL", "DATABASE_URL", "CAMLOOP_DATA_DIR", "CAMLOOP_ARTIFACTS_DIR"):
            assert required in env, (name, required)
    api_env = services["api"]["environment"]
    for required in ("CAMLOOP_API_KEYS", "CAMLOOP_URL_SIGNING_KEY", "CAMLOOP_LABEL_STUDIO_URL",
                     "CAMLOOP_LABEL_STUDIO_TOKEN", "CAMLOOP_LABEL_STUDIO_WEBHOOK_SECRET"):
        assert required in api_env, required


def test_secrets_come_from_the_environment_not_the_file():
    text = (ROOT / "compose.yaml").read_text()
    data = _compose()
    for svc in data["services"].values():
        for key, value in (svc.get("environment") or {}).items():
            is_flag = "_ENABLE_" in key  # a boolean switch, not a secret
            if not is_flag and any(s in key for s in ("PASSWORD", "TOKEN", "KEYS", "SECRET", "SIGNING")):
                assert isinstance(value, str) and value.startswith("${"), f"{key} is hard-coded"
    assert "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN" in text


def test_worker_reserves_a_gpu_and_is_pinned_to_it():
    worker = _compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert "CUDA_VISIBLE_DEVICES" in worker["environment"]
    assert worker["command"][:2] == ["camloop", "worker"]
