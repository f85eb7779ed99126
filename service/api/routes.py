"""Every HTTP route Kiln serves. A new surface is one module under service/api/ and one line here;
its OpenAPI tag (a task from service/api/schemas.py) labels its request metrics."""

from __future__ import annotations

from fastapi import APIRouter

from service.api import classify, generate, health, playground, tokenize
from service.api.openai import chat, completions

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    generate.router,
    completions.router,
    chat.router,
    tokenize.router,
    classify.router,
    playground.router,
)
