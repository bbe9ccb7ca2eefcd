"""An Ollama ``Modelfile`` for an exported GGUF: ``FROM`` the file, the chat template written in Ollama's Go template
language from the same table as the training template (``lumi.data.chat.TEMPLATES``), its default system message, and
the stop strings (end of turn, end of text)."""

from __future__ import annotations

from lumi.core.special_tokens import EOS_TOKEN, IM_END_TOKEN
from lumi.data.chat import ROLES, Template


def _go_literal(text: str) -> str:
    """Text inside a Go template: a ``{{`` would open an action, so it is written as a string action."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(template: Template) -> str:
    """``render_parts(messages, template, add_generation_prompt=True)`` without the leading BOS (llama.cpp adds it:
    the GGUF's add_bos), as an Ollama ``TEMPLATE``."""
    branches = []
    for index, role in enumerate(ROLES):
        keyword = "if" if index == 0 else "else if"
        branches.append(f'{{{{ {keyword} eq .Role "{role}" }}}}{_go_literal(template.header[role])}'
                        f"{{{{ .Content }}}}{_go_literal(template.end[role])}")
    # No whitespace-trimming actions ({{- ...}}): the turn ends are newlines that must stay.
    return ("{{ range .Messages }}" + "".join(branches) + "{{ end }}{{ end }}"
            + _go_literal(template.header["assistant"]))


def modelfile(gguf_name: str, template: Template | None) -> str:
    """The Modelfile text; a base model (no chat template) gets only ``FROM`` and the end-of-text stop."""
    lines = [f"FROM ./{gguf_name}"]
    if template is not None:
        lines.append(f'TEMPLATE """{go_template(template)}"""')
        if template.default_system is not None:
            lines.append(f'SYSTEM """{template.default_system}"""')
        lines.append(f'PARAMETER stop "{IM_END_TOKEN}"')
    lines.append(f'PARAMETER stop "{EOS_TOKEN}"')
    return "\n".join(lines) + "\n"
