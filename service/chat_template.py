"""Chat templates rendered the way transformers renders them (`apply_chat_template`).

The same Jinja2 setup as `transformers.utils.chat_template_utils`: a sandboxed environment with
`trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, a `{% generation %}` block
that renders its body, `tojson` without HTML escaping, `raise_exception`, `strftime_now`, safe
`dict` and `namespace`, and the tokenizer's special tokens (`bos_token`, `eos_token`, ...) as
variables. The rendered text is tokenized without adding special tokens again.

A template can also tell where an assistant turn ends: the special tokens it writes right
after an assistant message (`<|im_end|>`, `<|eot_id|>`) end a chat completion like EOS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from service.errors import InvalidRequest


class TemplateError(ValueError):
    """The template cannot be compiled."""


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training; here it just renders."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        block = jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body)
        block.set_lineno(lineno)
        return block

    def _render(self, caller: Callable[[], str]) -> str:
        return caller()


class _Dict:
    """`dict(...)` in a template, without attribute access to the real type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore names (no way to CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Jinja's own signature trick
        self, rest = args[0], args[1:]
        for name in dict(*rest, **kwargs):
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, dict(*rest, **kwargs))

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"templates cannot set underscore attributes ({name!r})")


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys=False):  # type: ignore[no-untyped-def]
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, "jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _Namespace
    return env


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str], origin: str = "") -> None:
        self.source = source
        self.origin = origin  # where it came from (for /v1/models and errors)
        self.special_tokens = dict(special_tokens)
        try:
            self._template = _environment().from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as exc:
            raise TemplateError(f"chat template {origin or ''} does not compile: {exc}") from exc

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **variables: Any) -> str:
        """The prompt text; a template's own `raise_exception` (e.g. roles must alternate) is a 400."""
        clean = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            return self._template.render(
                messages=clean, add_generation_prompt=add_generation_prompt, **{**self.special_tokens, **variables}
            )
        except jinja2.exceptions.TemplateError as exc:
            raise InvalidRequest(
                f"the model's chat template refused the messages: {exc}", code="invalid_messages", param="messages"
            ) from exc
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise InvalidRequest(
                f"the model's chat template failed on the messages: {type(exc).__name__}: {exc}",
                code="invalid_messages",
                param="messages",
            ) from exc

    def turn_suffix(self) -> str:
        """The text the template writes after an assistant message's content ("" if unknown)."""
        marker = "\u2063kiln-end-of-turn\u2063"
        for convo in (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
            [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": marker},
            ],
        ):
            try:
                text = self._template.render(messages=convo, add_generation_prompt=False, **self.special_tokens)
            except Exception:  # noqa: BLE001 - a template may refuse this shape; try the next one
                continue
            if marker in text:
                return text.split(marker, 1)[1]
        return ""


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BUILT_IN = {"chatml": CHATML}


def load_template(
    override: Path | None, entry_file: Path | None, default: str | None, special_tokens: dict[str, str]
) -> ChatTemplate | None:
    """The model's template: `KILN_CHAT_TEMPLATE` (a file, for every model) over the entry's own
    file over `KILN_DEFAULT_CHAT_TEMPLATE` (a file or a built-in name: chatml); None if none."""
    for path, origin in ((override, "KILN_CHAT_TEMPLATE"), (entry_file, "the model repository")):
        if path is not None and path.is_file():
            return ChatTemplate(path.read_text(), special_tokens, f"{path} ({origin})")
    if default:
        if default in BUILT_IN:
            return ChatTemplate(BUILT_IN[default], special_tokens, f"built-in {default!r} (KILN_DEFAULT_CHAT_TEMPLATE)")
        return ChatTemplate(Path(default).read_text(), special_tokens, f"{default} (KILN_DEFAULT_CHAT_TEMPLATE)")
    return None


def end_of_turn_ids(template: ChatTemplate, tokenizer: Tokenizer) -> frozenset[int]:
    """Special tokens the template writes right after an assistant message: they end a chat turn."""
    suffix = template.turn_suffix()
    if not suffix:
        return frozenset()
    special = {i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}
    return frozenset(i for i in tokenizer.encode(suffix, add_special_tokens=False).ids if i in special)
