"""hoist.from_pretrained: a transformers model built on the meta device and
filled by one hoist load, checked against transformers' own from_pretrained.

Run: PYTHONPATH=build/python python3 -m pytest -q tests/python/test_from_pretrained.py
(test_load_into_models.py runs it over every model type transformers maps.)
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from hoist_testlib import import_hoist, ok

hoist = import_hoist()
torch = pytest.importorskip("torch", reason="torch is not installed")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")
st = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")

TOKENS = [[1, 5, 9, 200, 3, 77]]


def _reference(path, **kwargs):
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    if "dtype" in kwargs and (major, minor) < (4, 56):
        kwargs["torch_dtype"] = kwargs.pop("dtype")
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def _logits(model):
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits


@pytest.fixture(scope="module")
def tied(tiny, tmp_path_factory):
    """tiny-llama with tie_word_embeddings and no lm_head.weight in its file, as llama-3.2-1b is published."""
    d = tmp_path_factory.mktemp("tied") / "m"
    d.mkdir()
    config = json.loads((tiny / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (d / "config.json").write_text(json.dumps(config))
    tensors = st.load_file(str(tiny / "model.safetensors"))
    del tensors["lm_head.weight"]
    st.save_file(tensors, str(d / "model.safetensors"))
    return d


def test_matches_transformers_tensor_for_tensor_and_in_its_logits(tiny):
    model, report = hoist.from_pretrained(str(tiny), device="cpu", return_report=True)
    reference = _reference(tiny)
    assert type(model) is type(reference) and model.dtype == reference.dtype == torch.bfloat16
    assert not model.training
    want, got = reference.state_dict(), model.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    # Buffers the checkpoint does not hold (rotary frequencies) are computed as transformers computes them.
    want_buffers = dict(reference.named_buffers())
    assert want_buffers and dict(model.named_buffers()).keys() == want_buffers.keys()
    for name, buffer in model.named_buffers():
        assert buffer.device.type == "cpu" and torch.equal(buffer, want_buffers[name]), name
    assert torch.equal(_logits(model), _logits(reference))
    assert report["missing"] == report["unexpected"] == report["mismatched"] == []


def test_parameters_are_the_loads_memory_not_copies(tiny):
    """One reservation, and every parameter a view into it: nothing was copied after the load."""
    model, report = hoist.from_pretrained(str(tiny), device="cpu", return_report=True)
    assert report["devices"]["cpu"]["driver_allocs"] == 1
    size = report["devices"]["cpu"]["bytes"]
    starts = sorted(p.data_ptr() for p in model.parameters())
    assert starts[-1] - starts[0] < size, "parameters lie further apart than the load's one reservation"
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_tied_embeddings_stay_one_tensor(tied):
    model = hoist.from_pretrained(str(tied), device="cpu")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(_logits(model), _logits(_reference(tied)))


@pytest.mark.parametrize("dtype", [torch.float32, "f32", "float32", "fp32", "FP32"])
def test_dtype_casts_as_transformers_does(tiny, dtype):
    model, report = hoist.from_pretrained(str(tiny), device="cpu", dtype=dtype, return_report=True)
    reference = _reference(tiny, dtype=torch.float32)
    assert model.dtype == torch.float32
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    # The cast happened in the load, into its one reservation.
    assert report["devices"]["cpu"]["driver_allocs"] == 1
    assert {t["dtype"] for t in report["tensors"]} == {"F32"}


@pytest.mark.parametrize("dtype", ["auto", "AUTO", None])
def test_dtype_auto_is_the_default_as_in_transformers(tiny, dtype):
    model = hoist.from_pretrained(str(tiny), device="cpu", dtype=dtype)
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tiny), dtype="auto")
    assert model.dtype == reference.dtype == torch.bfloat16


def test_torch_dtype_is_dtype_under_its_older_name(tiny):
    assert hoist.from_pretrained(str(tiny), device="cpu", torch_dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="give dtype or torch_dtype, not both"):
        hoist.from_pretrained(str(tiny), device="cpu", dtype="f32", torch_dtype=torch.float16)


def test_device_map_naming_one_device_is_that_device(tiny):
    model = hoist.from_pretrained(str(tiny), device_map={"": "cpu"})
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    model = hoist.from_pretrained(str(tiny), device_map="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}


@pytest.mark.parametrize("kwargs,message", [
    ({"device_map": "auto"}, "device_map='auto': from_pretrained puts the whole model on one device"),
    ({"device_map": {"model": "cpu", "lm_head": "cpu"}},
     "device_map={'model': 'cpu', 'lm_head': 'cpu'}: from_pretrained puts the whole model on one device"),
    ({"device": "cpu", "device_map": {"": "cpu"}}, "give device or device_map, not both"),
    ({"dtype": "int7"}, "dtype=torch.int7: expected a floating-point torch dtype"),
    ({"dtype": "bogus"}, "dtype='bogus': expected a floating-point torch dtype"),
])
def test_arguments_it_cannot_honour_are_refused(tiny, kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        hoist.from_pretrained(str(tiny), **kwargs)


def test_a_parameter_the_checkpoint_lacks_is_an_error_naming_it(tiny):
    with pytest.raises(ValueError) as e:
        hoist.from_pretrained(str(tiny), device="cpu", drop=r"^model\.norm\.weight$")
    message = str(e.value)
    assert message.startswith(f"{tiny}: not what LlamaForCausalLM expects: 1 missing from the checkpoint")
    assert "'model.norm.weight'" in message
    assert e.value.report["missing"] == ["model.norm.weight"]


def test_unexpected_tensors_are_refused_only_when_strict(tiny, tmp_path):
    d = tmp_path / "extra"
    shutil.copytree(tiny, d)
    tensors = st.load_file(str(d / "model.safetensors"))
    tensors["model.extra.weight"] = torch.ones(4)
    st.save_file(tensors, str(d / "model.safetensors"))
    model, report = hoist.from_pretrained(str(d), device="cpu", return_report=True)
    assert report["unexpected"] == ["model.extra.weight"]
    assert torch.equal(_logits(model), _logits(_reference(tiny)))
    with pytest.raises(ValueError, match=r"1 unexpected \(strict\) \('model.extra.weight'\)"):
        hoist.from_pretrained(str(d), device="cpu", strict=True)


def test_a_quantized_checkpoint_is_left_to_its_quantizer(tiny, tmp_path):
    d = tmp_path / "quant"
    shutil.copytree(tiny, d)
    config = json.loads((d / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="needs its quantizer"):
        hoist.from_pretrained(str(d), device="cpu")


def test_a_file_path_takes_the_config_beside_it(tiny, run_hoist, tmp_path):
    model = hoist.from_pretrained(str(tiny / "model.safetensors"), device="cpu")
    assert torch.equal(_logits(model), _logits(_reference(tiny)))


def test_generation_config_is_the_checkpoints(tiny, tmp_path):
    d = tmp_path / "gen"
    shutil.copytree(tiny, d)
    (d / "generation_config.json").write_text(json.dumps({"max_new_tokens": 7, "do_sample": False}))
    assert hoist.from_pretrained(str(d), device="cpu").generation_config.max_new_tokens == 7
    assert hoist.from_pretrained(str(d), device="cpu").generation_config == _reference(d).generation_config


def test_without_a_generation_config_file_it_is_transformers_default(tiny):
    """Read from config.json as transformers' from_pretrained reads it (not the one the model's
    __init__ made, which also sets output_attentions and output_hidden_states)."""
    assert not (tiny / "generation_config.json").exists()
    got, want = hoist.from_pretrained(str(tiny), device="cpu").generation_config, _reference(tiny).generation_config
    assert got.to_diff_dict() == want.to_diff_dict()
    assert got == want


def test_without_a_dtype_in_the_config_the_checkpoints_dtype_is_the_models(tiny, tmp_path, monkeypatch):
    """transformers' "auto": a bf16 checkpoint whose config names no dtype gives a bf16 model. The
    headers that tell the dtype are read once, for the load too."""
    d = tmp_path / "nodtype"
    shutil.copytree(tiny, d)
    config = json.loads((d / "config.json").read_text())
    for key in ("torch_dtype", "dtype"):
        config.pop(key, None)
    (d / "config.json").write_text(json.dumps(config))
    opened = []
    real_open = hoist._hoist.open_checkpoint
    monkeypatch.setattr(hoist._hoist, "open_checkpoint", lambda path: opened.append(path) or real_open(path))
    model = hoist.from_pretrained(str(d), device="cpu")
    monkeypatch.undo()
    assert len(opened) == 1, opened
    reference = _reference(d)
    assert model.dtype == reference.dtype == torch.bfloat16
    assert torch.equal(_logits(model), _logits(reference))


def test_device_none_asks_for_the_first_gpu_where_torch_sees_one(tiny, monkeypatch):
    asked = []
    real = hoist.load_into

    def spy(module, path, device=None, **kwargs):
        asked.append(device)
        return real(module, path, device="cpu", **kwargs)

    monkeypatch.setattr(hoist, "load_into", spy)
    hoist.from_pretrained(str(tiny))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    hoist.from_pretrained(str(tiny))
    assert asked == ["cpu", "cuda:0"]


def test_a_path_that_does_not_exist_is_file_not_found(tiny):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        hoist.from_pretrained(str(tiny / "nothing-here"), device="cpu")


def test_builds_in_threads_take_turns_and_leave_torch_as_it_was(tiny):
    """The meta patch of torch.nn.Module lasts one build, moves only the
    building thread's parameters, and is put back however builds interleave."""
    import threading

    register = torch.nn.Module.register_parameter
    errors, linears = [], []
    stop = threading.Event()

    def build():
        try:
            for _ in range(3):
                assert torch.equal(_logits(hoist.from_pretrained(str(tiny), device="cpu")), want)
        except Exception as e:  # reported below
            errors.append(e)

    def bystander():
        while not stop.is_set():
            linears.append(torch.nn.Linear(2, 2).weight.device.type)

    want = _logits(_reference(tiny))
    threads = [threading.Thread(target=build) for _ in range(4)]
    other = threading.Thread(target=bystander)
    other.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    other.join()
    assert not errors, errors
    assert torch.nn.Module.register_parameter is register
    assert linears and set(linears) == {"cpu"}, "another thread's module got meta parameters"
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"


def test_a_module_kept_in_float32_gets_the_stored_values_and_nothing_keeps_the_load(tiny_f32_dir, monkeypatch):
    """An f32 checkpoint into a float16 model one of whose modules stays
    float32: that module's weight is the stored values (not rounded through
    float16), and no parameter is left in the load's memory (which would keep
    the whole reservation alive beside the copies)."""
    loaded_at = set()
    real = hoist._to_torch

    def spy(model, name):
        tensor = real(model, name)
        loaded_at.add(tensor.data_ptr())
        return tensor

    monkeypatch.setattr(hoist, "_to_torch", spy)

    class Norm32(transformers.LlamaForCausalLM):
        def __init__(self, config):
            super().__init__(config)
            self.model.norm.float()

    model = hoist.from_pretrained(str(tiny_f32_dir), device="cpu", dtype=torch.float16, model_class=Norm32)
    stored = st.load_file(str(tiny_f32_dir / "model.safetensors"))
    assert model.model.norm.weight.dtype == torch.float32
    assert torch.equal(model.model.norm.weight, stored["model.norm.weight"])
    assert model.lm_head.weight.dtype == torch.float16
    assert torch.equal(model.lm_head.weight, stored["lm_head.weight"].half())
    assert loaded_at and not loaded_at & {p.data_ptr() for p in model.parameters()}


@pytest.fixture(scope="module")
def tiny_f32_dir(run_hoist, tmp_path_factory):
    out = tmp_path_factory.mktemp("f32") / "m"
    ok(run_hoist("synth", "--arch", "tiny-llama", "--dtype", "f32", "-q", out))
    return out
