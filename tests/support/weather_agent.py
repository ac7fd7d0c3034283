"""An openai-agents ``Agent`` with a real ``function_tool`` (``get_weather``) run to its final answer against a
``moa serve``, on either of the library's models (chat completions or Responses): the tests of both APIs share it."""

from __future__ import annotations

import asyncio
from typing import Any

import openai


def run_weather_agent(base_url: str, model_class: Any, model: str = "tools") -> tuple[str, list[str]]:
    """The agent's final output and the cities its tool was asked about."""
    from agents import Agent, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"sunny, 21C in {city}"

    async def run() -> str:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
        agent = Agent(
            name="weather",
            instructions="Answer with the weather.",
            tools=[get_weather],
            model=model_class(model=model, openai_client=client),
        )
        try:
            result = await Runner.run(agent, "What is the weather in Paris?")
        finally:
            await client.close()
        return str(result.final_output)

    return asyncio.run(run()), asked
