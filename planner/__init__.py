"""The planner: turns a goal into a plan for the VM."""

__all__: list[str] = []
