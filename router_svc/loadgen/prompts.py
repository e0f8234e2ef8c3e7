"""Prompts for the load generator: a built-in set spread over the six default experts, or a JSONL file.

A JSONL line is ``{"prompt": "..."}`` or ``{"messages": [{"role": "user", "content": "..."}]}``, with
optional ``"max_tokens"`` and ``"expert"`` (the label the prompt is meant for, kept for reports).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

BUILTIN: tuple[tuple[str, str], ...] = (
    ("code", "Write a Python function that returns the n-th Fibonacci number using memoization."),
    ("code", "Explain the difference between a list and a tuple in Python, with an example of each."),
    ("code", "How do I reverse a linked list in place in C? Show the code."),
    ("code", "Why does my JavaScript async function return a Promise instead of the value?"),
    ("code", "Write a SQL query that finds the second highest salary in an employees table."),
    ("code", "Refactor this loop into a list comprehension: for x in xs: if x > 0: out.append(x * 2)"),
    ("math", "Solve for x: 3x^2 - 12x + 9 = 0."),
    ("math", "What is the derivative of sin(x) * e^x?"),
    ("math", "Prove that the square root of 2 is irrational."),
    ("math", "Compute the integral of 1 / (1 + x^2) from 0 to 1."),
    ("math", "How many ways can 5 people be seated around a round table?"),
    ("math", "Find the eigenvalues of the matrix [[2, 1], [1, 2]]."),
    ("science", "Why is the sky blue? Explain Rayleigh scattering."),
    ("science", "What happens to the entropy of an isolated system over time?"),
    ("science", "Describe how photosynthesis converts light energy into chemical energy."),
    ("science", "What is the difference between an ionic and a covalent bond?"),
    ("science", "How does a black hole form from a massive star?"),
    ("science", "Explain Newton's third law with an example from everyday life."),
    ("medicine", "What are the common symptoms of type 2 diabetes?"),
    ("medicine", "How do ACE inhibitors lower blood pressure?"),
    ("medicine", "What is the first-line treatment for community-acquired pneumonia in adults?"),
    ("medicine", "Explain the difference between a virus and a bacterial infection for a patient."),
    ("medicine", "Which enzyme is elevated in the blood after a myocardial infarction?"),
    ("medicine", "What are the side effects of long-term corticosteroid therapy?"),
    ("law", "What is the difference between a misdemeanor and a felony?"),
    ("law", "Can a landlord keep a security deposit for normal wear and tear?"),
    ("law", "Explain the doctrine of promissory estoppel in contract law."),
    ("law", "What rights does the Fifth Amendment give a person accused of a crime?"),
    ("law", "Is a verbal agreement legally binding for the sale of land?"),
    ("law", "What must a plaintiff prove to win a negligence claim?"),
    ("general", "Suggest a three-day itinerary for a first visit to Rome."),
    ("general", "Write a short poem about autumn leaves."),
    ("general", "What are some tips for staying focused while working from home?"),
    ("general", "Recommend a few classic novels for someone who enjoyed The Hobbit."),
    ("general", "How do I make a good cup of pour-over coffee?"),
    ("general", "Give me ideas for a ten-year-old's birthday party."),
)


@dataclass(frozen=True)
class BenchPrompt:
    """One prompt: plain text or chat messages, an optional token limit and intended expert."""

    prompt: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    max_tokens: int | None = None
    expert: str = ""


def builtin_prompts() -> list[BenchPrompt]:
    return [BenchPrompt(prompt=text, expert=label) for label, text in BUILTIN]


def load_jsonl(path: str) -> list[BenchPrompt]:
    """Reads prompts from a JSONL file; raises ValueError naming the line of a malformed entry."""
    prompts: list[BenchPrompt] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc.msg}") from None
            if not isinstance(item, dict):
                raise ValueError(f"{path}:{number}: expected an object with 'prompt' or 'messages'")  # noqa: TRY004 - bad file content
            prompts.append(_from_item(item, f"{path}:{number}"))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def _from_item(item: dict, where: str) -> BenchPrompt:
    prompt = item.get("prompt", "")
    messages = item.get("messages", [])
    if not isinstance(prompt, str) or not isinstance(messages, list):
        raise ValueError(f"{where}: 'prompt' must be a string and 'messages' a list")  # noqa: TRY004 - bad file content
    if bool(prompt) == bool(messages):
        raise ValueError(f"{where}: set exactly one of 'prompt' or 'messages'")
    turns = []
    for message in messages:
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise ValueError(f"{where}: each message needs string 'role' and 'content'")  # noqa: TRY004 - bad file content
        turns.append((message["role"], message["content"]))
    max_tokens = item.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise ValueError(f"{where}: 'max_tokens' must be a positive integer")
    return BenchPrompt(prompt=prompt, messages=tuple(turns), max_tokens=max_tokens,
                       expert=str(item.get("expert", "")))
