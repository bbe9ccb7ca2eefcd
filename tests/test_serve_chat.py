"""``lumi chat`` driven through a pseudo-terminal, as a user types: streamed answers, multi-turn history through the
chat template, /params, /system, /reset, history cut at the context, raw completion mode for a base model, /quit."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packed_helpers import subprocess_env
from serve_helpers import make_serving_dirs

from lumi.serve.checkpoint import load_for_serving
from lumi.generation.engine import Engine
from lumi.serve.prompts import chat_ids
from lumi.generation.sampling import SamplingParams

PROMPT = ">>> "


class Terminal:
    """A child process on a pseudo-terminal: ``send`` a line, ``expect`` text to appear in its output."""

    def __init__(self, args: list[str]):
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                        env=subprocess_env({"TERM": "dumb"}))
        os.close(slave)
        self.output = ""

    def expect(self, text: str, timeout_s: float = 60.0) -> str:
        """Everything up to and including the next ``text``; consumed."""
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None and not select.select([self.master], [], [], 0)[0]:
                raise AssertionError(f"{text!r} not seen; output so far:\n{self.output}")
            if select.select([self.master], [], [], min(remaining, 0.5))[0]:
                try:
                    self.output += os.read(self.master, 65536).decode("utf-8", "replace").replace("\r\n", "\n")
                except OSError:  # the child closed the terminal
                    pass
        head, _, self.output = self.output.partition(text)
        return head + text

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        code = self.process.wait(timeout=30)
        os.close(self.master)
        return code


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return make_serving_dirs(tmp_path_factory.mktemp("chat"), max_seq_len=96)


def chat(model_dir) -> Terminal:
    return Terminal([sys.executable, "-m", "lumi", "chat", "--model-path", str(model_dir), "--device", "cpu"])


def test_terminal_chat_streams_multi_turn_answers(dirs):
    model, tokenizer = load_for_serving(dirs["chat"], device="cpu")
    params = SamplingParams(temperature=1.0, top_p=1.0, repetition_penalty=1.0, max_tokens=12, seed=4)
    with Engine(model, tokenizer) as engine:
        first_expected = engine.generate(chat_ids(tokenizer, [{"role": "user", "content": "hi there"}]), params)
        history = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": first_expected.text},
                   {"role": "user", "content": "and then?"}]
        second_expected = engine.generate(chat_ids(tokenizer, history), params)
        with_system = engine.generate(chat_ids(tokenizer, [{"role": "system", "content": "Be brief."},
                                                           {"role": "user", "content": "hi there"}]), params)

    terminal = chat(dirs["chat"])
    assert "chat mode" in terminal.expect(PROMPT)
    terminal.send("/params temperature=1 top_p=1 repetition_penalty=1 max_tokens=12 seed=4")
    assert "seed=4" in terminal.expect(PROMPT)
    terminal.send("/params temperature=7")
    assert "temperature" in terminal.expect(PROMPT)  # rejected with the field's limit, settings kept
    terminal.send("hi there")
    assert first_expected.text in terminal.expect(PROMPT)
    terminal.send("and then?")
    assert second_expected.text in terminal.expect(PROMPT)  # the answer to the whole history
    terminal.send("/reset")
    assert "reset" in terminal.expect(PROMPT)
    terminal.send("/system Be brief.")
    terminal.expect(PROMPT)
    terminal.send("hi there")
    assert with_system.text in terminal.expect(PROMPT)
    assert all(c.text.strip() for c in (first_expected, second_expected, with_system))  # the checks can fail

    # the history is cut from the front when it outgrows the context, and the user is told
    terminal.send("/reset")
    terminal.expect(PROMPT)
    terminal.send("/params max_tokens=20 temperature=0")
    terminal.expect(PROMPT)
    cut = False
    for turn in range(6):  # ~20 prompt tokens + 20 answer tokens a turn: a 96-token context fills by turn 3
        terminal.send(f"turn {turn} tell me about the old bridge and the market")
        cut = cut or "history cut" in terminal.expect(PROMPT)
    assert cut
    terminal.send("/quit")
    assert terminal.close() == 0


def test_base_model_runs_in_raw_completion_mode(dirs):
    terminal = chat(dirs["base"])
    assert "raw completion mode" in terminal.expect(PROMPT)
    terminal.send("/params max_tokens=5")
    terminal.expect(PROMPT)
    terminal.send("Once upon a time")
    terminal.expect(PROMPT)
    os.write(terminal.master, b"\x04")  # Ctrl-D ends the session too
    assert terminal.close() == 0


def test_demo_step_serves_asks_and_stops(dirs):
    """runs/ask_served_model.py: `lumi serve` as a process, one question through the openai client, then shutdown."""
    script = Path(__file__).resolve().parent.parent / "runs" / "ask_served_model.py"
    result = subprocess.run([sys.executable, str(script), "--model-path", str(dirs["chat"]), "--question",
                             "Where does the baker live?", "--max-tokens", "8", "--temperature", "1"],
                            capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    assert "answer: " in result.stdout and "finish_reason=" in result.stdout


def test_default_settings_chat_ten_turns_in_a_small_context(dirs):
    """With the defaults (no max_tokens) every turn of a long chat gets an answer: the prompt leaves room for one,
    the oldest turns go when the history outgrows the context, and the session says so; /help is plain text."""
    from lumi.serve.chat import ChatSession

    model, tokenizer = load_for_serving(dirs["chat"], device="cpu")
    written: list[str] = []
    with Engine(model, tokenizer) as engine:
        session = ChatSession(engine, written.append)
        for turn in range(10):
            before = len(written)
            session.handle(f"turn {turn}: tell me about the old bridge and the market by the river")
            said = "".join(written[before:])
            assert "error" not in said, said
            assert session.history[-2]["content"].startswith(f"turn {turn}")
        assert any("history cut" in text for text in written)
        session.handle("/help")
    assert "/reset" in written[-1] and "``" not in written[-1]
