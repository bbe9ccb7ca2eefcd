"""LoRA: PEFT adapter dirs that plain PEFT loads, merge-lora's merged model equal to base + adapter (fp32, 1e-5),
a base that does not match the adapter refused, target modules the model lacks refused."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import make_tiny_model_dir, write_tokenizer
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from lumi.cli import main
from lumi.data.chat import chat_tokenizer, get_template, save_chat_tokenizer
from lumi.core.errors import LumiError
from lumi.lora import save_adapter, wrap_lora
from lumi.core.special_tokens import EOS_ID, IM_END_ID


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    tokenizer_dir = write_tokenizer(root / "tokenizer")
    template = get_template("chatml")
    save_chat_tokenizer(chat_tokenizer(tokenizer_dir, template), template, root / "chat_tokenizer", tokenizer_dir)
    base = make_tiny_model_dir(root / "base", tokenizer_dir, seed=0)
    other = make_tiny_model_dir(root / "other", tokenizer_dir, seed=1)
    model = wrap_lora(AutoModelForCausalLM.from_pretrained(base), r=4, alpha=8, dropout=0.0,
                      target_modules=["q_proj", "v_proj", "down_proj"])
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: LoRA's B starts at zero, which would make any merge exact
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    save_adapter(model, root / "chat_tokenizer", root / "adapter", base)
    return {"root": root, "base": base, "other": other, "adapter": root / "adapter"}


def test_adapter_dir_loads_with_plain_peft(workspace):
    adapter = workspace["adapter"]
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(workspace["base"]), adapter)
    assert AutoTokenizer.from_pretrained(adapter).chat_template
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_merged_logits_equal_base_plus_adapter(workspace):
    merged_dir = workspace["root"] / "merged"
    assert main(["merge-lora", "--adapter-path", str(workspace["adapter"]), "--output-dir", str(merged_dir)]) == 0
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(workspace["base"],
                                                                               dtype=torch.float32),
                                          workspace["adapter"]).eval()
    base = AutoModelForCausalLM.from_pretrained(workspace["base"], dtype=torch.float32).eval()
    ids = torch.randint(6, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want, plain = merged(ids).logits, reference(ids).logits, base(ids).logits
    assert (got - want).abs().max().item() <= 1e-5
    assert (want - plain).abs().max().item() > 1e-2  # the adapter does change the model
    assert GenerationConfig.from_pretrained(merged_dir).eos_token_id == [IM_END_ID, EOS_ID]
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)


def test_base_mismatch_is_refused(workspace, capsys):
    out = workspace["root"] / "refused"
    assert main(["merge-lora", "--adapter-path", str(workspace["adapter"]), "--base-model-path",
                 str(workspace["other"]), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "base model mismatch" in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_not_an_adapter_and_unknown_target_modules(workspace, capsys):
    assert main(["merge-lora", "--adapter-path", str(workspace["base"]), "--output-dir",
                 str(workspace["root"] / "x")]) == 2
    assert "not a LoRA adapter dir" in capsys.readouterr().err
    with pytest.raises(LumiError, match=r"target_modules \['c_attn'\] are not in the model; its linear layers are "
                                        r"down_proj, gate_proj"):
        wrap_lora(AutoModelForCausalLM.from_pretrained(workspace["base"]), 4, 8, 0.0, ["q_proj", "c_attn"])
