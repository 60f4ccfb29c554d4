"""A user's own tool, registered beside the built-ins, called by a plan.

    python examples/custom_tool.py

Also usable as a plugin: planvm exec PLAN.json --plugin examples/custom_tool.py
"""

from __future__ import annotations

from tools import ToolRegistry, tool
from vm import VM


@tool
def convert_currency(amount: float, rate: float, currency: str = "EUR") -> dict:
    """Convert an amount of money with an exchange rate.

    Returns {amount, currency}.

    Args:
        amount: The amount in the source currency.
        rate: Units of the target currency per unit of the source currency.
        currency: The target currency's code.
    """
    return {"amount": round(amount * rate, 2), "currency": currency}


PLAN = [
    {"seq_no": 0, "type": "assign", "parameters": {"nights": 3, "rate": "120.50"}},
    {"seq_no": 1, "type": "assign", "parameters": {"total_usd": "${nights} * ${rate}"}},
    {
        "seq_no": 2,
        "type": "calling",
        "parameters": {
            "tool_name": "convert_currency",
            "tool_params": {"amount": "${total_usd}", "rate": 0.92},
            "output_vars": ["amount", "currency"],
        },
    },
    {"seq_no": 3, "type": "assign", "parameters": {"final_answer": "${nights} nights cost ${amount} ${currency}."}},
]


def main() -> str:
    result = VM(ToolRegistry([convert_currency])).run(PLAN)
    result.raise_for_error()
    return result.final_answer


if __name__ == "__main__":
    print(main())
