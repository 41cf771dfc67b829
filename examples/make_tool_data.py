"""Write the example tool-calling dataset (seeded, reproducible).

    python examples/make_tool_data.py

Writes examples/support_tools_openai.jsonl in OpenAI's fine-tuning format with tools:
each line lists the functions the assistant may call (`tools`), and its `messages`
hold the assistant's `tool_calls` (arguments as JSON text, as OpenAI writes them) and
the `tool` results that answer them.

The conversations are support exchanges for "Lumo", the made-up smart-lighting shop of
make_support_data.py, where the assistant must look facts up: an order's status, a
plan's price, shipping to a country. A question that needs no lookup (a password reset)
is answered directly. So a model learns when to call, which function, with which
argument (copied from the question), and how to word the result; a held-out
conversation has one right call and one right answer to compare greedy generation with.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 11
COUNT = 400
SYSTEM = "You are Lumo's support assistant. Look facts up with the tools."
STATUSES = {"shipped": "has shipped", "packed": "is packed and ships tomorrow", "delivered": "was delivered"}
PLANS = {"Basic": "$4", "Plus": "$9", "Pro": "$19"}
COUNTRIES = {"Canada": 5, "Mexico": 7, "Japan": 9, "Brazil": 8, "Spain": 6, "Kenya": 10, "India": 9, "Norway": 6}

TOOLS = [
    {"type": "function", "function": {
        "name": "order_status", "description": "Status of a customer's order.",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
    {"type": "function", "function": {
        "name": "plan_price", "description": "Monthly price of a Lumo plan.",
        "parameters": {"type": "object", "properties": {"plan": {"type": "string", "enum": sorted(PLANS)}}, "required": ["plan"]}}},
    {"type": "function", "function": {
        "name": "shipping_days", "description": "Days an order takes to reach a country.",
        "parameters": {"type": "object", "properties": {"country": {"type": "string"}}, "required": ["country"]}}},
]


def _call(rng: random.Random, name: str, arguments: dict) -> tuple[dict, str]:
    call_id = f"call_{rng.randrange(16**8):08x}"
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]}
    return message, call_id


def _conversation(rng: random.Random) -> list[dict]:
    intent = rng.randrange(4)
    if intent == 0:
        order = str(rng.randint(10000, 99999))
        question = rng.choice([f"Where is my order {order}?", f"What's the status of order {order}?", f"Has order {order} shipped?"])
        status = rng.choice(sorted(STATUSES))
        call, call_id = _call(rng, "order_status", {"order_id": order})
        result, answer = {"order_id": order, "status": status}, f"Order {order} {STATUSES[status]}."
    elif intent == 1:
        plan = rng.choice(sorted(PLANS))
        question = rng.choice([f"How much is the {plan} plan?", f"What does {plan} cost per month?", f"Price of the {plan} plan?"])
        call, call_id = _call(rng, "plan_price", {"plan": plan})
        result, answer = {"plan": plan, "monthly": PLANS[plan]}, f"The {plan} plan costs {PLANS[plan]} a month."
    elif intent == 2:
        country = rng.choice(sorted(COUNTRIES))
        question = rng.choice([f"Do you ship to {country}?", f"How long does shipping to {country} take?", f"Can I order from {country}?"])
        call, call_id = _call(rng, "shipping_days", {"country": country})
        result, answer = {"country": country, "days": COUNTRIES[country]}, f"Yes, we ship to {country} in {COUNTRIES[country]} days."
    else:
        question = rng.choice(["How do I reset my password?", "I forgot my password.", "Password reset please."])
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
                {"role": "assistant", "content": "Tap Account > Reset password and we will email you a link."}]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}, call,
            {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)},
            {"role": "assistant", "content": answer}]


def main() -> None:
    rng = random.Random(SEED)
    out = Path(__file__).resolve().parent / "support_tools_openai.jsonl"
    with open(out, "w", encoding="utf-8") as fh:
        for _ in range(COUNT):
            fh.write(json.dumps({"messages": _conversation(rng), "tools": TOOLS}) + "\n")
    print(f"wrote {COUNT} conversations to {out}")


if __name__ == "__main__":
    main()
