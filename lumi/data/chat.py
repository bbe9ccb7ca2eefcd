"""One chat template everywhere: the tokens SFT trains on are the tokens ``apply_chat_template`` gives at inference.

A template (``chatml``, the default; ``instruct``; ``alpaca``) is a small table of role headers and turn ends
(``TEMPLATES``). From that one table come both

* :func:`encode_conversation`, which the SFT corpus stage uses: the token ids of a conversation and its loss mask
  (1 exactly on the assistant contents and their end-of-turn token ``<|im_end|>``), and
* :func:`jinja_template`, the ``chat_template`` written into every SFT tokenizer / checkpoint, with ``{% generation %}``
  around the same spans, so ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)`` gives the training
  tokens and ``return_assistant_tokens_mask=True`` (TRL's ``assistant_only_loss``) gives the training mask.

Tokenization: the chat markers ``<|im_start|>`` / ``<|im_end|>`` (ids 4/5) are inserted as ids, and the text between
two markers is encoded as one piece of plain text with every added token split (``split_special_tokens=True``) -- the
same pieces the tokenizer cuts a rendered string into at its added tokens, so the ids match; and literal marker text
inside a message is encoded as characters and can never open a turn. A token that straddles the start of an assistant
content (a merge across ``"\\n"`` + text) is a target, as in transformers' assistant mask; such merges are counted.

Every conversation starts with BOS, as every pretraining document does, so packed conversations are separated by the
position-id restart at BOS that ``lumi.train.loss.position_ids_from_bos`` builds.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_json, read_json, sha256_file
from lumi.core.special_tokens import BOS_ID, BOS_TOKEN, EOS_ID, IM_END_ID, IM_END_TOKEN, IM_START_ID, IM_START_TOKEN
from lumi.formats.tokenizer import META as TOKENIZER_META, check_tokenizer_integrity

TemplateName = Literal["chatml", "instruct", "alpaca"]
ROLES = ("system", "user", "assistant")
END_OF_TURN_ID = IM_END_ID
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.")
CHAT_CONFIG = "chat_template_config.json"  # which template a tokenizer dir was written with (lumi's own record)
CHAT_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                        "spm.model", CHAT_CONFIG, TOKENIZER_META)


@dataclass(frozen=True)
class Template:
    """How each role's turn is written: ``header[role] + content + end[role]``. An assistant turn's ``end`` starts
    with ``<|im_end|>``; the content and that token are the targets. ``default_system`` is written when a
    conversation has no system message (the Alpaca preamble)."""

    name: str
    header: dict[str, str]
    end: dict[str, str]
    default_system: str | None = None


TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("chatml",
             header={role: f"{IM_START_TOKEN}{role}\n" for role in ROLES},
             end={role: f"{IM_END_TOKEN}\n" for role in ROLES}),
    # The seed's "instruct" layout ("### Instruction:\n...\n\n### Response:\n..."), its turn closed by <|im_end|> so
    # generation stops after one answer with the same end-of-turn id as ChatML.
    Template("instruct",
             header={"system": "", "user": "### Instruction:\n", "assistant": "### Response:\n"},
             end={"system": "\n\n", "user": "\n\n", "assistant": f"{IM_END_TOKEN}\n\n"}),
    Template("alpaca",
             header={"system": "", "user": "### Instruction:\n", "assistant": "### Response:\n"},
             end={"system": "\n\n", "user": "\n\n", "assistant": f"{IM_END_TOKEN}\n\n"},
             default_system=ALPACA_PREAMBLE),
)}


def get_template(name: str, system_prompt: str | None = None) -> Template:
    """The named template; ``system_prompt`` (when given) becomes its default system message."""
    if name not in TEMPLATES:
        raise LumiError(f"unknown chat template {name!r}; expected one of {', '.join(TEMPLATES)}")
    template = TEMPLATES[name]
    if system_prompt is not None:
        template = Template(template.name, template.header, template.end, system_prompt)
    return template


# --- messages

def check_messages(messages: Any) -> str | None:
    """Why ``messages`` is not a trainable conversation (None when it is): a list of {"role", "content"} string
    dicts, an optional system message first, then user/assistant turns alternating, starting with the user and
    ending with the assistant, no turn empty."""
    if not isinstance(messages, list):
        return "not_a_message_list"
    if not messages:
        return "no_assistant_turn"
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            return "malformed_message"
        if message["role"] not in ROLES:
            return "unknown_role"
        if not message["content"].strip():
            return "empty_turn"
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if not any(m["role"] == "assistant" for m in turns):
        return "no_assistant_turn"
    if any(m["role"] != ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(turns)) or len(turns) % 2:
        return "roles_out_of_order"
    return None


def with_system(messages: list[dict], template: Template) -> list[dict]:
    if template.default_system is not None and messages[0]["role"] != "system":
        return [{"role": "system", "content": template.default_system}, *messages]
    return messages


# --- our tokenization

@dataclass
class EncodedConversation:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is a target (predicted from the one before it)
    turn_ends: list[int] = field(default_factory=list)  # token index just past each assistant turn's <|im_end|>
    boundary_merges: int = 0  # target tokens that also cover header text (see the module docstring)


MARKER_IDS = {BOS_TOKEN: BOS_ID, IM_START_TOKEN: IM_START_ID, IM_END_TOKEN: IM_END_ID}
_MARKER_RE = re.compile("(" + "|".join(re.escape(marker) for marker in MARKER_IDS) + ")")

Part = tuple[str | int, bool]  # (text, or a marker id written by the template; is it a target)


def _template_text(text: str, target: bool = False) -> list[Part]:
    """Template text with its markers as ids (message contents never go through here)."""
    return [(MARKER_IDS.get(piece, piece), target) for piece in _MARKER_RE.split(text) if piece]


def render_parts(messages: list[dict], template: Template, add_generation_prompt: bool = False) -> list[Part]:
    """The conversation as the template writes it, in order: BOS, then per message its header, content and turn
    end; an assistant's content and ``<|im_end|>`` are the targets."""
    parts: list[Part] = [(BOS_ID, False)]
    for message in with_system(messages, template):
        role = message["role"]
        parts += _template_text(template.header[role])
        if role == "assistant":
            parts += [(message["content"], True), (END_OF_TURN_ID, True)]
            parts += _template_text(template.end[role].removeprefix(IM_END_TOKEN))
        else:
            parts += [(message["content"], False)] + _template_text(template.end[role])
    if add_generation_prompt:
        parts += _template_text(template.header["assistant"])
    return parts


def encode_parts(tokenizer: Any, parts: list[Part]) -> EncodedConversation:
    """Ids and loss mask of rendered parts: the text between two marker ids is tokenized as one string with every
    added token split, and a text token is a target when it overlaps a target text span."""
    segments: list[tuple[str, list[tuple[int, int]]]] = []  # (text, target character spans)
    layout: list[int | None] = []  # a marker id, or None for the next text segment
    text, spans, open_segment = "", [], False
    targets_of_markers: list[bool] = []
    for value, target in parts:
        if isinstance(value, int):
            if open_segment:
                segments.append((text, spans))
                layout.append(None)
                text, spans, open_segment = "", [], False
            layout.append(value)
            targets_of_markers.append(target)
            continue
        if target and value:
            spans.append((len(text), len(text) + len(value)))
        text += value
        open_segment = True
    if open_segment:
        segments.append((text, spans))
        layout.append(None)
    encoded = tokenizer([segment for segment, _ in segments], add_special_tokens=False, split_special_tokens=True,
                        return_offsets_mapping=True) if segments else {"input_ids": [], "offset_mapping": []}
    result = EncodedConversation([], [])
    segment_index = marker_index = 0
    for item in layout:
        if item is not None:
            target = targets_of_markers[marker_index]
            marker_index += 1
            result.input_ids.append(item)
            result.loss_mask.append(int(target))
            if item == END_OF_TURN_ID and target:
                result.turn_ends.append(len(result.input_ids))
            continue
        spans = segments[segment_index][1]
        for token_id, (start, end) in zip(encoded["input_ids"][segment_index],
                                          encoded["offset_mapping"][segment_index]):
            overlapping = [(s, e) for s, e in spans if start < e and end > s]
            result.input_ids.append(token_id)
            result.loss_mask.append(int(bool(overlapping)))
            result.boundary_merges += any(start < s or end > e for s, e in overlapping)
        segment_index += 1
    return result


def encode_conversation(tokenizer: Any, messages: list[dict], template: Template,
                        add_generation_prompt: bool = False) -> EncodedConversation:
    """Token ids and loss mask of one conversation. ``tokenizer``: a transformers fast tokenizer of the project's
    layout (see :func:`chat_tokenizer`)."""
    if not add_generation_prompt:
        problem = check_messages(messages)
        if problem:
            raise LumiError(f"conversation is not trainable: {problem}")
    return encode_parts(tokenizer, render_parts(messages, template, add_generation_prompt))


def longest_piece_chars(tokenizer: Any) -> int:
    """The most characters one token of ``tokenizer`` covers (its longest vocabulary piece; a byte piece's spelling
    ``<0x41>`` overstates its one byte, which only loosens the bound): a text of ``n`` characters is at least
    ``n / longest_piece_chars`` tokens."""
    return max(map(len, tokenizer.get_vocab()))


def messages_that_can_fit(messages: list[dict], max_tokens: int, longest_piece: int) -> int:
    """How many leading messages a prefix of at most ``max_tokens`` tokens can reach: the messages from the first one
    whose content brings the total past ``max_tokens * longest_piece`` characters on can lie in no such prefix.
    Counting characters is what keeps a message of megabytes from being tokenized at all (its ids, offsets and the
    tokenizer's working memory grow with it: ~2 GB for 5 MB) when it could never be trained on."""
    budget, total = max_tokens * longest_piece, 0
    for index, message in enumerate(messages):
        total += len(message["content"])
        if total > budget:
            return index
    return len(messages)


def encode_within(tokenizer: Any, messages: list[dict], template: Template, max_tokens: int,
                  longest_piece: int) -> tuple[EncodedConversation | None, bool]:
    """(encoding, whole): ``encode_conversation`` of every message when the conversation may fit ``max_tokens``;
    else of the leading messages that can lie in such a prefix (their ids, mask and turn ends are those of the whole
    conversation's encoding: every text segment ends at a marker), for ``cut_at_turn`` to cut, or None when not even
    the first can."""
    count = messages_that_can_fit(messages, max_tokens, longest_piece)
    if count == len(messages):
        return encode_conversation(tokenizer, messages, template), True
    return (encode_parts(tokenizer, render_parts(messages[:count], template)) if count else None), False


def cut_at_turn(encoded: EncodedConversation, max_tokens: int) -> EncodedConversation | None:
    """The longest prefix ending at an assistant turn end that fits ``max_tokens`` (None when not even the first
    exchange fits). The template's text after ``<|im_end|>`` is dropped with the rest."""
    fitting = [end for end in encoded.turn_ends if end <= max_tokens]
    if not fitting:
        return None
    end = fitting[-1]
    return EncodedConversation(encoded.input_ids[:end], encoded.loss_mask[:end],
                               [e for e in encoded.turn_ends if e <= end], encoded.boundary_merges)


# --- the Jinja template and the tokenizer files

def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def jinja_template(template: Template) -> str:
    """The ``chat_template`` that renders exactly :func:`render_parts`, with ``{% generation %}`` marks around the
    targets (an assistant turn's content and ``<|im_end|>``)."""
    header, end = template.header, template.end
    system = template.default_system
    lines = ["{{- bos_token -}}"]
    if system is not None:
        lines.append("{%- if messages[0]['role'] != 'system' -%}"
                     f"{{{{- {_literal(header['system'] + system + end['system'])} -}}}}{{%- endif -%}}")
    lines.append("{%- for message in messages -%}")
    for index, role in enumerate(ROLES):
        keyword = "if" if index == 0 else "elif"
        lines.append(f"{{%- {keyword} message['role'] == {_literal(role)} -%}}{{{{- {_literal(header[role])} -}}}}")
        if role == "assistant":
            lines.append("{%- generation -%}{{- message['content'] + " + _literal(IM_END_TOKEN)
                         + " -}}{%- endgeneration -%}"
                         + f"{{{{- {_literal(end[role].removeprefix(IM_END_TOKEN))} -}}}}")
        else:
            lines.append(f"{{{{- message['content'] + {_literal(end[role])} -}}}}")
    lines.append("{%- else -%}{{- raise_exception('unknown role: ' + message['role']) -}}{%- endif -%}")
    lines.append("{%- endfor -%}")
    lines.append(f"{{%- if add_generation_prompt -%}}{{{{- {_literal(header['assistant'])} -}}}}{{%- endif -%}}")
    return "\n".join(lines)


def chat_tokenizer(directory: str | Path, template: Template) -> Any:
    """The transformers tokenizer of a stage-20 tokenizer dir or a checkpoint dir, made a chat tokenizer: the
    markers are special tokens (``skip_special_tokens`` drops them), markers written by the template are parsed as
    tokens (``split_special_tokens=False``: message content is encoded by us with every added token split, and by
    ``apply_chat_template(..., sanitize_control_tokens=True)`` the same way), and ``chat_template`` is set.
    Refuses a tokenizer whose ids 4/5 are not the chat markers."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        raise LumiError(f"{directory}: no tokenizer.json (expected a tokenizer or checkpoint directory)")
    if (directory / TOKENIZER_META).is_file():  # a stage-20 dir or a pretraining checkpoint: its files as trained
        check_tokenizer_integrity(directory)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), split_special_tokens=False)
    except (OSError, ValueError) as exc:
        raise LumiError(f"{directory}: tokenizer could not be loaded: {exc}") from None
    if not tokenizer.is_fast:
        raise LumiError(f"{directory}: a fast (tokenizer.json) tokenizer is needed for chat offsets")
    found = {token_id: tokenizer.convert_ids_to_tokens(token_id) for token_id in (IM_START_ID, IM_END_ID)}
    if found != {IM_START_ID: IM_START_TOKEN, IM_END_ID: IM_END_TOKEN}:
        raise LumiError(f"{directory}: the tokenizer lacks the chat markers: ids {IM_START_ID}/{IM_END_ID} are "
                        f"{found[IM_START_ID]!r}/{found[IM_END_ID]!r}, expected {IM_START_TOKEN!r}/"
                        f"{IM_END_TOKEN!r} (train it with lumi tokenizer, lumi/special_tokens.py)")
    tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken(token, special=True, normalized=False) for token in (IM_START_TOKEN, IM_END_TOKEN)]})
    tokenizer.chat_template = jinja_template(template)
    return tokenizer


def save_chat_tokenizer(tokenizer: Any, template: Template, directory: str | Path,
                        source_dir: str | Path | None = None) -> None:
    """Write the chat tokenizer (``save_pretrained``: tokenizer.json, tokenizer_config.json, chat_template.jinja),
    ``spm.model`` from ``source_dir`` when it has one (the tokenizer's identity), and which template it is."""
    directory = Path(directory)
    tokenizer.save_pretrained(str(directory))
    if source_dir is not None and (Path(source_dir) / "spm.model").is_file():
        shutil.copy2(Path(source_dir) / "spm.model", directory / "spm.model")
    atomic_write_json(directory / CHAT_CONFIG, {"template": template.name, "system_prompt": template.default_system,
                                                "end_of_turn_id": END_OF_TURN_ID})
    write_chat_tokenizer_meta(directory, source_dir)


def write_chat_tokenizer_meta(directory: Path, source_dir: str | Path | None) -> None:
    """``tokenizer_meta.json`` of a chat tokenizer dir: the trained tokenizer's record (``source_dir``'s, a stage-20
    dir or a pretraining checkpoint) with ``files`` hashing the chat files as written. ``copy_chat_tokenizer`` carries
    it into every SFT, DPO and GRPO checkpoint and merged model, so ``open_model_dir`` (evaluate, serve, the next
    stage) checks their tokenizer files exactly as it checks a pretraining checkpoint's. A source without a record
    (a foreign tokenizer) gives none, as before."""
    source_meta = Path(source_dir) / TOKENIZER_META if source_dir is not None else None
    if source_meta is None or not source_meta.is_file() or not (directory / "spm.model").is_file():
        return
    meta = read_json(source_meta, what="tokenizer metadata")
    hashed = [name for name in CHAT_TOKENIZER_FILES if name != TOKENIZER_META and (directory / name).is_file()]
    meta["files"] = {name: sha256_file(directory / name) for name in hashed}
    meta["sha256"] = meta["files"]["spm.model"]
    atomic_write_json(directory / TOKENIZER_META, meta)


def generation_eos_ids() -> list[int]:
    """``generation_config.eos_token_id`` of every chat model: end of turn first, then ``</s>``."""
    return [END_OF_TURN_ID, EOS_ID]


PROBE_CONVERSATION = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "Again, please."}, {"role": "assistant", "content": "Hello again."}]


def verify_chat_tokenizer(directory: str | Path, template: Template) -> None:
    """Load a written chat tokenizer back with plain ``AutoTokenizer`` and refuse it unless ``apply_chat_template``
    gives our ids and our loss mask on a probe conversation. This catches the field's silent failures: a template
    without ``{% generation %}`` marks (an all-zero assistant mask, no error) and an end-of-turn token outside the
    marked span (never learned: the model never stops)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    ours = encode_conversation(tokenizer, PROBE_CONVERSATION, template)
    theirs = tokenizer.apply_chat_template(PROBE_CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    if not any(theirs["assistant_masks"]):
        raise LumiError(f"{directory}: chat template has no {{% generation %}} marks (assistant mask all zero)")
    ends = [i for i, token in enumerate(theirs["input_ids"]) if token == END_OF_TURN_ID and theirs["assistant_masks"][i]]
    if len(ends) != sum(m["role"] == "assistant" for m in PROBE_CONVERSATION):
        raise LumiError(f"{directory}: the end-of-turn token {IM_END_TOKEN} is outside the chat template's "
                        "{% generation %} span: it would never be learned")
    if theirs["input_ids"] != ours.input_ids or theirs["assistant_masks"] != ours.loss_mask:
        raise LumiError(f"{directory}: apply_chat_template's tokens or assistant mask differ from the training "
                        "tokenization")


def set_chat_generation_config(model: Any) -> None:
    """Make plain ``model.generate`` stop after one assistant turn: ``eos_token_id`` is the end-of-turn id and
    ``</s>`` (trainers that reset it to ``</s>`` alone leave a model that never stops), pad and bos as the
    tokenizer's."""
    from lumi.core.special_tokens import PAD_ID

    config = model.generation_config
    config.eos_token_id, config.pad_token_id, config.bos_token_id = generation_eos_ids(), PAD_ID, BOS_ID


def check_chat_generation_config(directory: str | Path) -> None:
    from transformers import GenerationConfig

    found = GenerationConfig.from_pretrained(str(directory)).eos_token_id
    found = found if isinstance(found, list) else [found]
    if END_OF_TURN_ID not in found:
        raise LumiError(f"{directory}: generation_config.eos_token_id is {found}, without the end-of-turn id "
                        f"{END_OF_TURN_ID}: generation would not stop after a turn")


def copy_chat_tokenizer(tokenizer_dir: str | Path, directory: str | Path) -> None:
    """The chat tokenizer files of an SFT data dir (or of another chat checkpoint) into a model dir."""
    for name in CHAT_TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copy2(Path(tokenizer_dir) / name, Path(directory) / name)


def save_chat_model(model: Any, tokenizer_dir: str | Path, directory: str | Path,
                    state_dict: dict | None = None) -> None:
    """A loadable chat model dir: ``save_pretrained`` (weights, config, generation config with the end-of-turn id)
    plus the chat tokenizer files; refused if the generation config lost the end-of-turn id."""
    set_chat_generation_config(model)
    model.save_pretrained(str(directory), state_dict=state_dict)
    copy_chat_tokenizer(tokenizer_dir, directory)
    check_chat_generation_config(directory)


def loss_targets(input_ids: Any, loss_mask: Any) -> Any:
    """(batch, seq) next-token targets of packed SFT rows: position t predicts input t+1 -- the one and only
    shift -- and only where the loss mask marks input t+1 (assistant content, <|im_end|>); elsewhere IGNORE_INDEX."""
    import torch

    from lumi.lm.linear_cross_entropy import IGNORE_INDEX

    targets = torch.full_like(input_ids, IGNORE_INDEX)
    targets[:, :-1] = input_ids[:, 1:].masked_fill(loss_mask[:, 1:] == 0, IGNORE_INDEX)
    return targets
