"""Write the example support-conversation dataset (seeded, reproducible).

    python examples/make_support_data.py

Writes examples/support_conversations.jsonl (brightrun_lora_v4: one
{"conversation_id", "turns": [{"role", "content"}]} per line) and the same data in
OpenAI chat format, examples/support_conversations_openai.jsonl.

The conversations are customer-support exchanges for "Lumo", a made-up smart-lighting
shop. Every answer follows from its question: the intent picks the reply, and the
details the customer gives (order number, product, plan, country) reappear in it. So a
model can learn the task from the data alone, and a held-out conversation has one right
answer to compare greedy generation against.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 7
COUNT = 600
SYSTEM = "You are Lumo's support assistant."
PRODUCTS = ["desk lamp", "bulb", "light strip", "dimmer", "hub", "floor lamp", "motion sensor", "smart plug"]
PLANS = {"Basic": "$4", "Plus": "$9", "Pro": "$19"}
COUNTRIES = ["Canada", "Mexico", "Japan", "Brazil", "Spain", "Kenya", "India", "Norway", "Chile", "Italy"]


def _order(rng: random.Random) -> str:
    return str(rng.randint(10000, 99999))


def _conversation(rng: random.Random) -> tuple[str, str]:
    intent = rng.randrange(8)
    if intent == 0:
        q = rng.choice(["How do I reset my password?", "I forgot my password.", "I can't log in, I lost my password.",
                        "Password reset please.", "How can I change my password?"])
        a = "Open the app, tap Account > Reset password, and we will email you a reset link."
    elif intent == 1:
        n = _order(rng)
        q = rng.choice([f"Where is my order {n}?", f"Order {n} has not arrived yet.", f"Can you track order {n}?",
                        f"Any news on order {n}?", f"What is the status of order {n}?"])
        a = f"Order {n} has shipped. You can track it in the app under Orders > {n}."
    elif intent == 2:
        n = _order(rng)
        q = rng.choice([f"I want a refund for order {n}.", f"Please refund order {n}.",
                        f"Can I get my money back for order {n}?", f"Refund order {n}, please."])
        a = f"I have started a refund for order {n}. It reaches your card in 5 business days."
    elif intent == 3:
        p = rng.choice(PRODUCTS)
        q = rng.choice([f"My {p} arrived broken.", f"The {p} I got is damaged.", f"My new {p} does not work.",
                        f"I received a faulty {p}."])
        a = f"Sorry about your {p}! Reply with a photo and we will send a new {p} for free."
    elif intent == 4:
        plan = rng.choice(list(PLANS))
        q = rng.choice([f"How much is the {plan} plan?", f"What does {plan} cost?", f"Price of the {plan} plan?",
                        f"How much do you charge for {plan}?"])
        a = f"The {plan} plan costs {PLANS[plan]} a month. You can switch plans at any time."
    elif intent == 5:
        plan = rng.choice(list(PLANS))
        q = rng.choice([f"How do I cancel my {plan} plan?", f"Cancel my {plan} subscription.",
                        f"I want to stop paying for {plan}."])
        a = f"Go to Account > Billing and tap Cancel. Your {plan} plan stays active until the month ends."
    elif intent == 6:
        c = rng.choice(COUNTRIES)
        q = rng.choice([f"Do you ship to {c}?", f"Can I order from {c}?", f"Is delivery to {c} possible?",
                        f"Do you deliver in {c}?"])
        a = f"Yes, we ship to {c}. Delivery takes 5 to 9 business days."
    else:
        p = rng.choice(PRODUCTS)
        q = rng.choice([f"How do I pair my {p}?", f"My {p} will not connect.", f"How can I connect the {p} to the app?",
                        f"Setting up my {p}, what do I do?"])
        a = f"Hold the button on your {p} for 5 seconds, then tap Add device in the app."
    return q, a


def main() -> None:
    rng = random.Random(SEED)
    here = Path(__file__).resolve().parent
    with open(here / "support_conversations.jsonl", "w") as v4, open(here / "support_conversations_openai.jsonl", "w") as oa:
        for i in range(COUNT):
            q, a = _conversation(rng)
            turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}, {"role": "assistant", "content": a}]
            if rng.random() < 0.15:
                turns += [{"role": "user", "content": rng.choice(["Thanks!", "Thank you.", "Great, thanks."])},
                          {"role": "assistant", "content": "You're welcome! Anything else I can help with?"}]
            v4.write(json.dumps({"conversation_id": f"support-{i:04d}", "turns": turns}) + "\n")
            oa.write(json.dumps({"messages": turns}) + "\n")


if __name__ == "__main__":
    main()
