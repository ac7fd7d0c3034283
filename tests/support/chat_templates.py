"""Minimal chat templates written for the tests, each enforcing one family's constraints the way the real
templates do (``raise_exception`` with the same words), and a tokenizer built offline to render them through
transformers' ``apply_chat_template`` (as vLLM's server and moa's local backends do).

- ``GEMMA_LIKE``: no system role at all; user/assistant strictly alternating, starting with the user.
- ``MISTRAL_LIKE``: an optional system turn first, then strict alternation; no other role.
- ``NO_TOOL``: ChatML that takes every role but ``tool``.
- ``CHATML``: ChatML taking every role anywhere (no constraint).
"""

from __future__ import annotations

from functools import cache
from typing import Any

GEMMA_LIKE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

MISTRAL_LIKE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set loop_messages = messages %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system_message is defined %}"
    "{{ '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported, with the exception of an "
    "initial optional system message!') }}{% endif %}"
    "{% endfor %}"
)

NO_TOOL = (
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}{{ raise_exception('Tool role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TEMPLATES = {"gemma-like": GEMMA_LIKE, "mistral-like": MISTRAL_LIKE, "no-tool": NO_TOOL, "chatml": CHATML}


@cache
def offline_tokenizer() -> Any:
    """A transformers fast tokenizer built in memory (a word-level vocabulary of its special tokens): enough to
    render chat templates with ``apply_chat_template``, no files, no hub."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<bos>": 1, "<eos>": 2}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
        bos_token="<bos>", eos_token="<eos>", unk_token="[UNK]",
    )  # fmt: skip


def render(template: str, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """``messages`` through ``template`` with transformers' ``apply_chat_template``; raises what the template
    raises (jinja2's ``TemplateError`` for ``raise_exception``)."""
    text = offline_tokenizer().apply_chat_template(
        messages, chat_template=template, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    assert isinstance(text, str)
    return text
