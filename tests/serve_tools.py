"""Tools for the service tests (a plugin file): each call is appended to the file named by
PLANVM_TEST_CALL_LOG, so a test can tell whether a step ran twice."""

import os
import time

from tools import tool


def _log(line: str) -> None:
    path = os.environ.get("PLANVM_TEST_CALL_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()


@tool
def slow_echo(text: str, seconds: float = 0.05) -> str:
    """Wait, then return the text.

    Args:
        text: What to return.
        seconds: How long to wait first.
    """
    _log(f"slow_echo {text}")
    time.sleep(seconds)
    return text


@tool
def send_email(to: str, body: str) -> str:
    """Send an email (in the tests: only log it).

    Args:
        to: The address.
        body: The message.
    """
    _log(f"send_email {to} {body}")
    return f"sent to {to}"
