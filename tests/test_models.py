import pytest

from rewardhub.errors import ModelLoadError
from rewardhub.models import LoraOptions, load_model, load_model_and_tokenizer, load_tokenizer
from rewardhub.testing import build_tokenizer


def test_tiny_model_loads_through_from_pretrained(tiny_model_path):
    model, tok = load_model_and_tokenizer(str(tiny_model_path))
    assert tok.pad_token_id != tok.eos_token_id and tok.padding_side == "left"
    assert model.config.pad_token_id == tok.pad_token_id
    assert tok.decode(tok("12+35=47", add_special_tokens=False).input_ids) == "12+35=47"
    assert model.get_input_embeddings().num_embeddings == len(tok)


def test_builtin_alias_builds_once_and_loads():
    model = load_model("builtin:tiny-llama")
    assert model.config.hidden_size == 128
    with pytest.raises(ModelLoadError, match="unknown built-in model"):
        load_model("builtin:huge")


def test_nonexistent_paths_and_ids_give_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="network access or a local cache"):
        load_tokenizer("no-such-org/no-such-model")
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model("builtin:tiny-llama", dtype="float8")


def test_tokenizer_without_distinct_pad_gets_one(tmp_path):
    tok = build_tokenizer()
    tok.pad_token = tok.eos_token
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token_id is not None and loaded.pad_token_id != loaded.eos_token_id


def test_lora_wraps_and_trains_only_the_adapter(tiny_model_path):
    tok = load_tokenizer(str(tiny_model_path))
    model = load_model(str(tiny_model_path), tokenizer=tok, lora=LoraOptions(r=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with model.disable_adapter():  # the adapter-disabled base is the reference model
        pass


def test_reward_model_kind(tiny_model_path):
    model = load_model(str(tiny_model_path), kind="reward")
    assert model.config.num_labels == 1
