"""Which model each server serves: kept across restarts (SQLite and PostgreSQL, the
``backend`` fixture of the storage tests), and added to alerts as ``current_model`` /
``previous_model`` annotations by the dispatcher."""

from __future__ import annotations

from gpuwarden.alerts.served_models import ServedModels
from gpuwarden.model import Sample, make_labels
from gpuwarden.storage import Store
from tests.storage.conftest import Backend, backend

from .conftest import Harness, Recorder, action, dstore, firing, make_alert

__all__ = ["backend", "dstore"]  # fixtures reused from the storage and delivery tests
T0 = 1_700_000_000.0


def kv(server: str, model: str, t: float) -> Sample:
    return Sample("kv_cache_usage_ratio", make_labels(node="n1", server=server, model=model),
                  0.5, t)


def test_served_models_survive_a_restart(backend: Backend) -> None:
    store = backend.open(node="n1")
    served = ServedModels(store.engine, node="n1", touch_every=10.0)
    served.observe([kv("vllm-0", "m-v1", T0), kv("vllm-1", "other", T0)], T0)
    for k in range(1, 30):
        served.observe([kv("vllm-0", "m-v1", T0 + k)], T0 + k)
    served.observe([kv("vllm-0", "m-v2", T0 + 60)], T0 + 60)
    assert served.current_model("vllm-0") == "m-v2" and served.previous_model("vllm-0") == "m-v1"

    again = ServedModels(store.engine, node="n1")
    assert again.annotations("vllm-0") == {"current_model": "m-v2", "previous_model": "m-v1"}
    assert again.annotations("vllm-1") == {"current_model": "other"}
    assert again.annotations("vllm-9") == {}
    assert ServedModels(store.engine, node="n2").current_model("vllm-0") is None
    # A -> B -> A: the previous model is B.
    again.observe([kv("vllm-0", "m-v1", T0 + 120)], T0 + 120)
    third = ServedModels(store.engine, node="n1")
    assert (third.current_model("vllm-0"), third.previous_model("vllm-0")) == ("m-v1", "m-v2")


def test_served_models_multi_model_and_gpu_labels_ignored() -> None:
    served = ServedModels(None, node="n1")
    served.observe([kv("s", "base", T0), kv("s", "lora-a", T0),
                Sample("gpu_up", make_labels(node="n1", gpu="0", model="H100"), 1.0, T0)], T0)
    assert served.current_model("s") == "base,lora-a"
    assert served.current_model("") is None


def test_model_annotations(harness: Harness, recorder: Recorder, dstore: Store) -> None:
    models = ServedModels(dstore.engine, node="n1")

    def cycle(model: str, t: float) -> None:
        models.observe([Sample("kv_cache_usage_ratio",
                               make_labels(node="n1", server="vllm-0", model=model), 0.5, t),
                        Sample("gpu_up", make_labels(node="n1", gpu="0", model="H100"), 1, t)],
                       t)

    cycle("llama-v1", T0)
    cycle("llama-v2", T0 + 60)
    d = harness(action(url=recorder.url), served_models=models)
    d.submit([firing(make_alert("QualityDrift")), firing(make_alert("GPULost", server=""))])
    reqs = recorder.wait(2)
    by_name = {r.json()["alerts"][0]["labels"]["alertname"]: r.json() for r in reqs}
    ann = by_name["QualityDrift"]["alerts"][0]["annotations"]
    assert ann["current_model"] == "llama-v2" and ann["previous_model"] == "llama-v1"
    assert "current_model" not in by_name["GPULost"]["alerts"][0]["annotations"]
