"""Chat for every transport: messages in, the model's own chat template renders the prompt.

The OpenAI route and gRPC `Chat` hand over neutral `ChatMessage`s and `TextOptions`; this
module renders the conversation with the model's template (service/chat_template.py), marks the
prompt as carrying its special tokens already, adds the template's end-of-turn tokens to the
stop tokens, and submits through the text data plane like any other request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from service.dataplane.caller import Caller
from service.dataplane.text import TextDataPlane, TextOptions
from service.engine.textgen import BaseTextModel, TextStream
from service.errors import InvalidRequest

ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    name: str | None = None

    def as_template_input(self) -> dict:
        return {"role": self.role, "content": self.content, **({"name": self.name} if self.name else {})}


class ChatDataPlane:
    def __init__(self, text: TextDataPlane) -> None:
        self.text = text

    def render(self, model: BaseTextModel, messages: Sequence[ChatMessage], add_generation_prompt: bool = True) -> str:
        """The prompt the model's template makes of the conversation."""
        if not messages:
            raise InvalidRequest("`messages` must hold at least one message", code="empty_messages", param="messages")
        for i, m in enumerate(messages):
            if m.role not in ROLES:
                raise InvalidRequest(
                    f"messages[{i}].role {m.role!r} is not one of {list(ROLES)}",
                    code="invalid_messages",
                    param="messages",
                )
        template = model.chat_template
        if template is None:
            reason = model.chat_template_error or (
                "it has no chat template (none in the checkpoint); set KILN_DEFAULT_CHAT_TEMPLATE"
                " (a file, or `chatml`) or add chat_template.jinja to its repository entry"
            )
            code = "chat_template_invalid" if model.chat_template_error else "chat_template_missing"
            raise InvalidRequest(f"model {model.name!r} cannot chat: {reason}", code=code, param="model")
        return template.render([m.as_template_input() for m in messages], add_generation_prompt)

    def open_many(
        self, caller: Caller, messages: Sequence[ChatMessage], batch: Sequence[TextOptions]
    ) -> tuple[BaseTextModel, list[TextStream]]:
        """One stream per choice; every choice continues the same rendered conversation."""
        if not batch:
            raise InvalidRequest("the request asks for no choice", code="invalid_parameter", param="n")
        model = self.text.model(caller, batch[0].model)
        prompt = self.render(model, messages)
        params = [self.text.resolve(model, replace(o, prompt=prompt, add_special_tokens=False)) for o in batch]
        # A turn ends at EOS (the engine's own rule) or at the template's end-of-turn tokens.
        ends = model.end_of_turn_ids
        params = [replace(p, stop_token_ids=p.stop_token_ids | ends) for p in params]
        return model, self.text.submit(caller, model, params)
