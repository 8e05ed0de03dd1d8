"""hoist.load_into and hoist.from_pretrained against transformers' from_pretrained, model type by model type.

transformers 5 renames and converts checkpoint tensors on load (experts
merged, fused projections chunked or split, transposes), with one mapping
per model type. For every model type that has such a mapping and builds at a
tiny size with a generic small config, this saves a randomly initialised
model with save_pretrained (which writes the checkpoint layout, conversions
reversed), loads it back with from_pretrained (the reference) and with
hoist.load_into into a differently seeded model, and requires the two to be
equal tensor for tensor, with nothing missing, unexpected or mismatched.
hoist.from_pretrained, which builds the model itself, must give the same
tensors and buffers.

Run: PYTHONPATH=build/python python3 -m pytest -q tests/python/test_load_into_models.py
"""

from __future__ import annotations

import inspect
import logging

import pytest

from hoist_testlib import import_hoist

hoist = import_hoist()
torch = pytest.importorskip("torch", reason="torch is not installed")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

# Small sizes under the names configs commonly use; each config takes the
# ones it knows.
SMALL = dict(
    hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_attention_heads=4,
    num_key_value_heads=2, num_hidden_layers=2, vocab_size=128, head_dim=16,
    num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1,
    n_group=1, topk_group=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
    v_head_dim=16,
)
MAX_PARAMETERS = 20_000_000
# Fewer compared models than this means the sweep no longer finds them (a
# changed transformers); that is a failure, not a pass. transformers 5.25
# gives 66.
MIN_COMPARED = 30


def _mapped_model_types() -> list[str]:
    try:
        from transformers.conversion_mapping import _build_checkpoint_conversion_mapping
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:
        pytest.skip("this transformers has no conversion mapping (before 5.0): nothing to compare")
    return [t for t in _build_checkpoint_conversion_mapping() if t in CONFIG_MAPPING_NAMES]


def _tiny_model(model_type: str, seed: int, meta: bool = False):
    """A randomly initialised model of `model_type` at SMALL sizes, or None
    when the type does not build that way (needs more config, an extra
    package, or has no auto class)."""
    config_class = type(transformers.AutoConfig.for_model(model_type))
    known = set(inspect.signature(config_class.__init__).parameters)
    defaults = config_class()
    config = transformers.AutoConfig.for_model(
        model_type, **{k: v for k, v in SMALL.items() if k in known or hasattr(defaults, k)})
    torch.manual_seed(seed)
    with torch.device("meta" if meta else "cpu"):
        for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
            try:
                return auto.from_config(config)
            except ValueError:  # no such head for this config
                continue
    return None


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Every mapped model type that builds at SMALL sizes, saved with
    save_pretrained: [(model_type, directory, model class, what
    from_pretrained loads back: its state_dict and every buffer)]."""
    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("mapped")
    saved_list, unbuilt = [], []
    for model_type in _mapped_model_types():
        try:
            shape = _tiny_model(model_type, 0, meta=True)
            if shape is None or sum(p.numel() for p in shape.parameters()) > MAX_PARAMETERS:
                unbuilt.append(model_type)
                continue
            saved = _tiny_model(model_type, 0)
            saved.save_pretrained(root / model_type)
            reference = type(saved).from_pretrained(root / model_type)
            # In float16 too: the cast, and the modules transformers keeps in float32.
            half = type(saved).from_pretrained(root / model_type, dtype=torch.float16)
        except Exception:  # configs that need more than generic sizes, or extra packages: not hoist's to judge
            unbuilt.append(model_type)
            continue
        saved_list.append((model_type, root / model_type, type(saved), {
            None: (reference.state_dict(), dict(reference.named_buffers())),
            torch.float16: (half.state_dict(), dict(half.named_buffers()))}))
    assert len(saved_list) >= MIN_COMPARED, (
        f"only {len(saved_list)} model types built ({[s[0] for s in saved_list]}); {len(unbuilt)} did not: {unbuilt}")
    return saved_list


def _differ(want: dict, got: dict) -> list[str]:
    return [n for n in want if n not in got or got[n].shape != want[n].shape or not torch.equal(got[n], want[n])]


def test_load_into_matches_from_pretrained_for_every_mapped_model(saved_models):
    failures = []
    for model_type, path, _, references in saved_models:
        want = references[None][0]
        module = _tiny_model(model_type, 1)
        report = hoist.load_into(module, str(path))
        differ = _differ(want, module.state_dict())
        problems = {k: report[k] for k in ("missing", "unexpected", "mismatched") if report[k]}
        if differ or problems:
            failures.append(f"{model_type} ({type(module).__name__}): differ {differ[:3]} {problems}")
    assert not failures, "\n".join(failures)


def test_hoist_from_pretrained_matches_transformers_for_every_mapped_model(saved_models):
    """hoist.from_pretrained builds the model with its parameters on the meta
    device and its buffers computed; every tensor, buffers the checkpoint
    does not hold (rotary frequencies) included, must equal transformers'
    own from_pretrained, in its dtype, in eval mode."""
    failures = []
    kept_in_float32 = set()
    for model_type, path, model_class, references in saved_models:
        for dtype, (want, want_buffers) in references.items():
            try:
                model = hoist.from_pretrained(str(path), device="cpu", model_class=model_class, dtype=dtype)
            except Exception as e:
                failures.append(f"{model_type} ({dtype}): {type(e).__name__}: {e}")
                continue
            got = model.state_dict()
            # Same values in the same dtypes (torch.equal ignores dtype).
            differ = _differ(want, got) + [n for n in got if n not in want or got[n].dtype != want[n].dtype]
            differ_buffers = _differ(want_buffers, dict(model.named_buffers()))
            if differ or differ_buffers or model.training:
                failures.append(f"{model_type} ({model_class.__name__}, {dtype}): differ {differ[:3]}, "
                                f"buffers {differ_buffers[:3]}, training {model.training}")
            if dtype == torch.float16 and any(t.dtype == torch.float32 for t in want.values()):
                kept_in_float32.add(model_type)
    assert not failures, "\n".join(failures)
    # The sweep covers models that keep modules in float32 (transformers 5.25 has several).
    assert kept_in_float32, "no model kept a module in float32 under dtype=float16: that path went untested"
