"""The ``planvm`` command line: the composition root that wires vm, tools, planner and training."""

__all__: list[str] = []
