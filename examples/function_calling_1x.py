"""Function calling written with Pipecat 1.x's names, on trouper.

The shape of a Pipecat 1.14 function-calling bot: tools given to ``LLMContext`` as a plain
``async def`` function (its schema read from its signature and docstring) and as a
``FunctionSchema`` carrying its handler, so nothing is registered by hand;
``LLMContextAggregatorPair(context)`` bound to no service; ``OpenAILLMService.Settings`` with a
system instruction; an ``LLMRunFrame`` for the greeting; ``PipelineWorker`` run by a
``WorkerRunner``. Only the imports differ from Pipecat, plus a trio entry point and a text
transport standing in for the transport, STT and TTS (typed lines in, ``LLMTextFrame``s out).

Run it against OpenAI (``OPENAI_API_KEY``) or any compatible server::

    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 python examples/function_calling_1x.py \\
        "What's the weather in Paris, and where should I eat there?"
"""

from __future__ import annotations

import os
import sys

import trio

from actors import (
    FunctionCallParams,
    FunctionSchema,
    LLMContext,
    LLMContextAggregatorPair,
    LLMRunFrame,
    LLMTextFrame,
    OpenAILLMService,
    PipelineParams,
    TextTransport,
)
from runtime import Frame, Pipeline, PipelineWorker, WorkerRunner

SYSTEM_INSTRUCTION = (
    "You are a friendly travel assistant. Answer in one or two short sentences. "
    "Call a tool only when the user asks about the weather or about restaurants."
)


async def get_current_weather(
    params: FunctionCallParams, location: str, unit: str = "celsius"
) -> None:
    """Look up the weather at a place right now.

    Args:
        location: The city and country, e.g. "Paris, France".
        unit: "celsius" or "fahrenheit", whichever is used at the location.
    """
    temperature = 24 if unit == "celsius" else 75
    await params.result_callback(
        {"location": location, "conditions": "sunny", "temperature": temperature, "unit": unit}
    )


# A FunctionSchema spells the tool out by hand (here: an enum of cuisines) and carries the
# classic handler that runs its calls.
async def recommend_restaurant(params: FunctionCallParams) -> None:
    location = params.arguments["location"]
    cuisine = params.arguments.get("cuisine", "local")
    await params.result_callback({"name": "Chez Trouper", "cuisine": cuisine, "city": location})


restaurant_function = FunctionSchema(
    name="get_restaurant_recommendation",
    description="Recommend a restaurant in a city.",
    properties={
        "location": {"type": "string", "description": "The city, e.g. Paris."},
        "cuisine": {"type": "string", "enum": ["local", "italian", "vegetarian"]},
    },
    required=["location"],
    handler=recommend_restaurant,
)


async def main(questions: list[str], *, model: str | None = None) -> list[str]:
    """Greet, then answer ``questions`` one after the other; returns the answers (the
    greeting first)."""

    def show(frame: Frame) -> None:
        if isinstance(frame, LLMTextFrame):
            print(frame.text, end="", flush=True)

    transport = TextTransport(on_output=show)

    llm = OpenAILLMService(
        api_key=os.getenv("OPENAI_API_KEY"),
        settings=OpenAILLMService.Settings(
            model=model or os.getenv("OPENAI_MODEL") or "gpt-4.1",
            system_instruction=SYSTEM_INSTRUCTION,
            temperature=0.7,
        ),
        retry_on_timeout=True,
        retry_timeout_secs=60.0,
    )

    context = LLMContext(tools=[get_current_weather, restaurant_function])
    user_aggregator, assistant_aggregator = LLMContextAggregatorPair(context)

    pipeline = Pipeline(
        [
            transport.input(),
            user_aggregator,
            llm,
            transport.output(),
            assistant_aggregator,
        ]
    )

    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
    )
    runner = WorkerRunner()

    # Kick off the conversation: the assistant speaks first. (The context is changed directly
    # only before the worker runs; while it runs, the context store owns it.)
    context.add_message(
        {"role": "developer", "content": "Introduce yourself to the user in one sentence."}
    )

    answers: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run, worker)

        transport.expect_answer()
        await worker.queue_frames([LLMRunFrame()])
        answers.append(await transport.wait_answer())
        print()

        for question in questions:
            print(f"> {question}")
            await transport.send_text(question)
            answers.append(await transport.wait_answer())
            print()
        await worker.end()
    return answers


if __name__ == "__main__":
    trio.run(main, sys.argv[1:] or ["What's the weather in Paris, and where should I eat there?"])
