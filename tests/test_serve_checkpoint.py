"""What the server loads: plain checkpoint dirs and PEFT adapter dirs (merged at load), and the HF-format contract
that lets vLLM / SGLang serve the same dirs (``vllm serve DIR``): checked here through transformers alone."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from serve_helpers import make_serving_dirs
from transformers import AutoModelForCausalLM, AutoTokenizer

from lumi.core.errors import LumiError
from lumi.serve.checkpoint import load_for_serving
from lumi.generation.engine import stop_token_ids
from lumi.serve.prompts import chat_ids

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is the mill?"}]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return make_serving_dirs(tmp_path_factory.mktemp("ckpt"))


def test_adapter_dir_is_loaded_onto_its_base_and_merged(dirs, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(dirs["chat"])
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)  # records base_model_name_or_path = dirs["chat"]
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(dirs["chat"])
    ids = torch.tensor([[2, 100, 200, 300, 400]])
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(dirs["chat"]), adapter_dir)(ids).logits
    model, tokenizer = load_for_serving(adapter_dir, device="cpu")
    assert not hasattr(model, "peft_config")  # merged: a plain model
    assert torch.allclose(model(ids).logits, reference, atol=1e-5)
    assert not torch.allclose(AutoModelForCausalLM.from_pretrained(dirs["chat"])(ids).logits, reference, atol=1e-3)
    assert tokenizer.chat_template  # from the base dir: the adapter dir has no tokenizer files


def test_refuses_what_it_cannot_serve(dirs, tmp_path):
    with pytest.raises(LumiError, match="not found"):
        load_for_serving(tmp_path / "missing")
    with pytest.raises(LumiError, match="no config.json"):
        load_for_serving(tmp_path)
    pickled = tmp_path / "pickled"  # a pickle checkpoint (pytorch_model.bin) could run code when loaded
    pickled.mkdir()
    for item in dirs["base"].iterdir():
        if not item.name.endswith(".safetensors"):
            (pickled / item.name).write_bytes(item.read_bytes())
    torch.save(AutoModelForCausalLM.from_pretrained(dirs["base"]).state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(LumiError, match="safetensors"):
        load_for_serving(pickled)


def test_checkpoint_dirs_follow_the_hf_format_vllm_and_sglang_serve(dirs):
    """``vllm serve DIR`` needs: config.json naming a stock architecture (no remote code), safetensors weights,
    generation_config.json with the stop ids, tokenizer files that AutoTokenizer loads, and the chat template in
    them; vLLM renders chats with ``apply_chat_template`` — the ids our server uses."""
    chat_dir = dirs["chat"]
    config = json.loads((chat_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in config
    assert list(chat_dir.glob("*.safetensors")) and not list(chat_dir.glob("*.bin"))
    generation = json.loads((chat_dir / "generation_config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(chat_dir, trust_remote_code=False, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(chat_dir, trust_remote_code=False)
    assert tokenizer.chat_template
    assert generation["eos_token_id"] in stop_token_ids(model, tokenizer)
    assert tokenizer.eos_token_id == config["eos_token_id"] and tokenizer.bos_token_id == config["bos_token_id"]
    served_model, served_tokenizer = load_for_serving(chat_dir, device="cpu")
    assert chat_ids(served_tokenizer, MESSAGES) == tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True,
                                                                                  return_dict=True)["input_ids"]
    ids = torch.tensor([chat_ids(served_tokenizer, MESSAGES)])
    assert torch.equal(served_model(ids).logits, model(ids).logits)
