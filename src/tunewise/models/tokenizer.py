"""Token counting in a base model's own tokenizer, without torch or transformers.

The data stage counts tokens of rendered chat examples. Loading transformers costs seconds; the `tokenizers`
library plus the model's own Jinja chat template costs milliseconds and gives the same ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from tunewise.errors import TunewiseError
from tunewise.spec import EMBEDDED_MODEL


class ChatTokenizer:
    def __init__(self, folder: Path, context_length: int | None = None):
        from tokenizers import Tokenizer

        self.folder = folder
        if not (folder / "tokenizer.json").is_file():
            raise TunewiseError(
                f"no tokenizer.json in {folder}",
                hint="point model.base at a Hugging Face model folder saved with a fast tokenizer",
            )
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._context_length = context_length

    @classmethod
    def for_base(cls, base: str) -> ChatTokenizer:
        if (
            base == EMBEDDED_MODEL or base == "tiny:random"
        ):  # the tiny test model shares the embedded tokenizer
            from tunewise.models import embedded

            return cls(embedded.tokenizer_dir(), context_length=embedded.CONTEXT_LENGTH)
        folder = Path(base)
        if not folder.is_dir():
            raise TunewiseError(
                f"base model '{base}' is not a local folder, so its tokenizer cannot be read offline",
                hint="download the model once (e.g. `huggingface-cli download ID --local-dir DIR`) and set model.base to DIR",
            )
        return cls(folder)

    @cached_property
    def template(self):
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        path = self.folder / "chat_template.jinja"
        if path.is_file():
            source = path.read_text(encoding="utf-8")
        else:
            config = json.loads((self.folder / "tokenizer_config.json").read_text(encoding="utf-8"))
            source = config.get("chat_template")
            if not source:
                raise TunewiseError(f"the tokenizer in {self.folder} has no chat template")

        def raise_exception(message: str) -> None:
            raise jinja2.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(source)

    @cached_property
    def context_length(self) -> int:
        if self._context_length:
            return self._context_length
        config = self.folder / "config.json"
        if config.is_file():
            value = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
            if value:
                return int(value)
        return 2048  # a conservative default for models that do not say

    @cached_property
    def special_tokens(self) -> dict[str, str]:
        """bos_token, eos_token, ... as tokenizer_config.json names them: templates write them (Llama 3's
        `{{ bos_token }}`, Mistral's `eos_token` after each reply), as transformers passes them."""
        path = self.folder / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        tokens = {}
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = config.get(name)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                tokens[name] = value
        return tokens

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        plain = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
        return self.template.render(
            messages=plain, add_generation_prompt=add_generation_prompt, **self.special_tokens
        )

    def count(self, texts: list[str]) -> list[int]:
        """Token counts; special tokens written in the text (e.g. <|im_start|>) count as one token each."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def template_overhead(self, roles: tuple[str, ...]) -> int:
        """Tokens the chat template adds around message contents for this sequence of roles."""
        return self.count([self.render([{"role": r, "content": ""} for r in roles])])[0]


PROBE = "\u2402tunewise-probe\u2403"  # text no template adds or rewrites, to find what follows a reply


def end_of_turn(render: Callable[[list[dict[str, str]]], str], eos: str | None = None) -> str:
    """The text a chat template writes right after an assistant message's content: the end-of-turn marker
    the model must learn to emit (`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3, `<end_of_turn>` for
    Gemma, `<|end|>` for Phi-3, `</s>` for Mistral), without the separator after it. Found by rendering a
    probe reply, because it is often not the tokenizer's eos token (Gemma's eos is `<eos>`, Phi-3's
    `<|endoftext|>`); `eos` when the template writes nothing after a reply.

    >>> chatml = lambda ms: "".join(f"<|im_start|>{m['role']}\\n{m['content']}<|im_end|>\\n" for m in ms)
    >>> end_of_turn(chatml)
    '<|im_end|>'
    >>> end_of_turn(lambda ms: "".join(m["content"] for m in ms), eos="</s>")
    '</s>'
    """
    text = render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": PROBE}])
    at = text.rfind(PROBE)
    after = text[at + len(PROBE) :] if at != -1 else ""
    marker = after.strip().split("\n")[0].strip() if after.strip() else ""
    return marker or (eos or "")
