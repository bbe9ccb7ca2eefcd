"""``lumi export``: a final model dir (pretrained, SFT, DPO, or a LoRA adapter, merged first) as one GGUF file for
llama.cpp and Ollama, with a ``Modelfile``, a model card (``README.md``) and ``export.json``; written atomically.

``--verify`` runs the GGUF in llama.cpp (llama-cpp-python) and records in ``export.json`` how many texts of every kind
tokenize to Lumi's ids, the largest logit difference and how many greedy continuations are identical."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_json, atomic_write_text, read_json, sha256_file, staged_output_dir
from lumi.data.chat import CHAT_CONFIG, get_template
from lumi.eval.gguf_agreement import PROBE_TEXTS, measure_agreement
from lumi.formats.gguf import DTYPES, write_gguf
from lumi.formats.gguf_tokenizer import gguf_vocab
from lumi.formats.model_card import write_model_card
from lumi.formats.model_io import load_tokenizer
from lumi.data.ollama import modelfile
from lumi.loading import load_model

log = logging.getLogger(__name__)
FORMATS = ("gguf",)
MANIFEST = "export.json"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", type=Path, required=True,
                        help="a final model dir (lumi pretrain/sft/dpo) or a LoRA adapter dir (merged first)")
    parser.add_argument("--format", choices=FORMATS, default="gguf", help="output format (default gguf)")
    parser.add_argument("--dtype", choices=DTYPES, default="f16",
                        help="weight type in the file (norms stay f32); default f16")
    parser.add_argument("--output-dir", type=Path, required=True, help="where the GGUF, Modelfile and README go")
    parser.add_argument("--verify", action="store_true",
                        help="run the GGUF in llama.cpp (llama-cpp-python) and record token-id, logit and greedy "
                             "agreement with Lumi in export.json")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")


def chat_template_of(model_dir: Path, tokenizer) -> tuple[str | None, object | None]:
    """(the Jinja chat template for llama.cpp, the lumi Template for Ollama); both None for a base model.
    llama.cpp's Jinja engine has no ``{% generation %}`` tag (a transformers extension marking training targets),
    so those marks are dropped: they render nothing."""
    text = getattr(tokenizer, "chat_template", None)
    if not text:
        return None, None
    record = model_dir / CHAT_CONFIG
    template = None
    if record.is_file():
        chat = read_json(record, what="chat template record")
        template = get_template(chat["template"], chat.get("system_prompt"))
    for mark in ("{%- generation -%}", "{%- endgeneration -%}"):
        text = text.replace(mark, "")
    return text, template


def run(args: argparse.Namespace) -> int:
    model_dir = args.model_path
    if not model_dir.is_dir():
        raise LumiError(f"{model_dir}: model directory not found")
    vocab = gguf_vocab(model_dir)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, "model to export", dtype="float32", device="cpu")  # verified; adapters merged
    jinja, template = chat_template_of(model_dir, tokenizer)
    gguf_name = f"model-{args.dtype}.gguf"
    with staged_output_dir(args.output_dir, args.force) as staging:
        write_gguf(model, vocab, staging / gguf_name, args.dtype, name=model_dir.resolve().name,
                   chat_template=jinja)
        atomic_write_text(staging / "Modelfile", modelfile(gguf_name, template))
        manifest = {"format": "gguf", "file": gguf_name, "dtype": args.dtype, "source": str(model_dir.resolve()),
                    "sha256": sha256_file(staging / gguf_name), "chat_template": jinja is not None}
        if args.verify:
            texts = list(PROBE_TEXTS)
            manifest["agreement"] = measure_agreement(model, tokenizer, staging / gguf_name, texts, texts)
            log.info("llama.cpp agreement: %s", manifest["agreement"])
        atomic_write_json(staging / MANIFEST, manifest)
        write_model_card(staging, model_dir=model_dir, export=manifest)
    log.info("exported %s to %s", model_dir, Path(args.output_dir) / gguf_name)
    return 0
