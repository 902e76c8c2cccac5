"""The seed example (Pipecat's "Basic Conversation with Function Calling"), on trouper.

Only the imports changed, plus a trio entry point and a text transport standing in for
STT/TTS: typed lines go in as ``TranscriptionFrame``s, ``LLMTextFrame``s come out.

Run it against OpenAI (``OPENAI_API_KEY``) or any compatible server::

    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 python examples/function_calling.py "Weather in Paris?"
"""

from __future__ import annotations

import os
import sys

import trio

from actors import (
    FunctionCallParams,
    FunctionSchema,
    LLMTextFrame,
    OpenAILLMContext,
    OpenAILLMService,
    TextTransport,
    ToolsSchema,
)
from runtime import Frame, Pipeline, PipelineTask


async def main(questions: list[str], *, model: str | None = None) -> list[str]:
    """Ask ``questions`` one after the other; returns the answers."""

    def show(frame: Frame) -> None:
        if isinstance(frame, LLMTextFrame):
            print(frame.text, end="", flush=True)

    transport = TextTransport(on_output=show)

    # Configure the service
    llm = OpenAILLMService(
        model=model or os.getenv("OPENAI_MODEL") or "gpt-4o",
        api_key=os.getenv("OPENAI_API_KEY"),
        params=OpenAILLMService.InputParams(
            temperature=0.7,
        ),
    )

    # Define function schema
    weather_function = FunctionSchema(
        name="get_weather",
        description="Get current weather information",
        properties={"location": {"type": "string", "description": "City name"}},
        required=["location"],
    )

    # Create tools and context
    tools = ToolsSchema(standard_tools=[weather_function])
    context = OpenAILLMContext(
        messages=[
            {"role": "system", "content": "You are a helpful assistant. Keep responses concise."}
        ],
        tools=tools,
    )

    # Register function handler
    async def get_weather_handler(params: FunctionCallParams) -> None:
        location = params.arguments.get("location")
        # Call weather API here...
        weather_data = {"location": location, "temperature": "75°F", "conditions": "sunny"}
        await params.result_callback(weather_data)

    llm.register_function("get_weather", get_weather_handler)

    # Create context aggregators
    context_aggregator = llm.create_context_aggregator(context)

    # Use in pipeline
    pipeline = Pipeline(
        [
            transport.input(),
            context_aggregator.user(),  # Handles user messages
            llm,  # Processes with OpenAI
            transport.output(),
            context_aggregator.assistant(),  # Captures responses
        ]
    )

    answers: list[str] = []
    async with PipelineTask(pipeline) as task:
        for question in questions:
            print(f"> {question}")
            await transport.send_text(question)
            answers.append(await transport.wait_answer())
            print()
        del task
    return answers


if __name__ == "__main__":
    trio.run(main, sys.argv[1:] or ["What's the weather in Paris?"])
