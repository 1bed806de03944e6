"""`chat`: one chat-completions call to the fleet's model gateway (spec.gateway).

The handler only turns a task's input into chat messages and the gateway's answer into a small
result; timeouts, retries, the circuit breaker and the fleet-wide rate limit are the gateway
client's business (newfuse_agent.gateway), so every handler that calls a model gets them alike.
"""

from __future__ import annotations

from typing import Any, Final

from newfuse_agent.handlers import HandlerError, TaskContext, handler

NO_GATEWAY_MESSAGE: Final = "no model gateway configured for this fleet (spec.gateway.endpoint)"
INPUT_SHAPES: Final = 'a string, {"prompt": "..."} or {"messages": [{"role": ..., "content": ...}]}'
# The role given to a bare prompt.
USER_ROLE: Final = "user"


def to_messages(task_input: Any) -> list[dict[str, str]]:
    """The chat messages a task's input stands for; HandlerError (not retryable) if malformed."""
    if isinstance(task_input, str):
        return [{"role": USER_ROLE, "content": task_input}]
    if isinstance(task_input, dict):
        if "messages" in task_input:
            return _checked_messages(task_input["messages"])
        prompt = task_input.get("prompt")
        if isinstance(prompt, str):
            return [{"role": USER_ROLE, "content": prompt}]
    raise HandlerError(f"chat input must be {INPUT_SHAPES}", retryable=False)


def _checked_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise HandlerError("chat input `messages` must be a non-empty list", retryable=False)
    checked: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
            or not all(isinstance(key, str) and isinstance(v, str) for key, v in message.items())
        ):
            raise HandlerError(
                f"chat input `messages[{index}]` must be an object of strings with `role` and "
                "`content`",
                retryable=False,
            )
        checked.append(dict(message))
    return checked


def _first_choice_content(response: dict[str, Any]) -> Any:
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise HandlerError("model gateway answer has no choices", retryable=False)
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise HandlerError("model gateway answer has no choices[0].message", retryable=False)
    # None is a legitimate content (a tool call, say), so it is passed on rather than refused.
    return message.get("content")


@handler("chat")
async def chat(task_input: Any, context: TaskContext) -> dict[str, Any]:
    """Ask the fleet's model; return the first choice's content, the model and the token usage."""
    if context.gateway is None:
        raise HandlerError(NO_GATEWAY_MESSAGE, retryable=False)
    messages = to_messages(task_input)
    response = await context.gateway.chat(messages)
    return {
        "content": _first_choice_content(response),
        "model": response.get("model"),
        "usage": response.get("usage"),
    }
