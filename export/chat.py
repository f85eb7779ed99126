"""A checkpoint's chat template and special tokens, copied into the model repository.

Hugging Face checkpoints carry the template in `chat_template.jinja` (transformers >= 4.43
writes it there), in `chat_template.json`, or as `chat_template` in `tokenizer_config.json` (a
string, or a list of named templates: the one named "default" is used). Kiln's own demo LM is
trained on Python source; its template writes the conversation as comments and lets the model
answer in code, so `make serve` can chat.
"""

from __future__ import annotations

import json
from pathlib import Path

from export.tokenizer import BOS, EOS, PAD

TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")

DEMO_CHAT_TEMPLATE = """{%- for message in messages %}
{{- '# ' + message['role'] + ': ' + message['content'] | replace('\\n', '\\n# ') + '\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '# assistant:\\n' }}{% endif %}"""


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def find_chat_template(checkpoint: Path, source: str) -> str | None:
    """The checkpoint's template text, or the demo one for Kiln's own checkpoints, or None."""
    if (checkpoint / TEMPLATE_FILE).is_file():
        return (checkpoint / TEMPLATE_FILE).read_text()
    for data in (_json(checkpoint / "chat_template.json"), _json(checkpoint / "tokenizer_config.json")):
        template = data.get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if isinstance(template, str) and template.strip():
            return template
    return DEMO_CHAT_TEMPLATE if source == "kiln" else None


def special_tokens(checkpoint: Path, source: str) -> dict[str, str]:
    """The template's special-token variables (`bos_token`, `eos_token`, ...), as strings."""
    if source == "kiln":
        return {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    config = _json(checkpoint / "tokenizer_config.json")
    out: dict[str, str] = {}
    for name in SPECIAL_NAMES:
        value = config.get(name)
        if isinstance(value, dict):  # an AddedToken written out: {"content": "<s>", ...}
            value = value.get("content")
        if isinstance(value, str):
            out[name] = value
    return out
